"""Model sources: the shipped demo, CIFAR ResNets, torchvision ResNets, TorchScript, ONNX files.

Imports are lazy so that ONNX-only paths (``rescompile.models.onnx_source``) never load PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadedModel", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "LoadedModel":
        from rescompile.models.loaded import LoadedModel

        return LoadedModel
    if name == "load_model":
        from rescompile.models.loader import load_model

        return load_model
    raise AttributeError(name)
