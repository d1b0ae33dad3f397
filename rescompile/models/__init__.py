"""Model sources: the shipped demo, CIFAR ResNets, torchvision ResNets, TorchScript, ONNX files.

Imports are lazy so that ONNX-only paths (``rescompile.models.onnx_source``) never load PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadedModel", "load_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rescompile.models import loader

        return getattr(loader, name)
    raise AttributeError(name)
