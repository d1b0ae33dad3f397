"""What every model source returns: a ``LoadedModel`` (no PyTorch or onnx import here).

``loader.py`` (demo, CIFAR and torchvision ResNets, TorchScript) and ``onnx_source.py`` (ONNX
files) both build one; the default preprocessing preset comes from
:func:`rescompile.data.preprocess.default_preset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    """A model ready for export (``module``) or already ONNX (``onnx_path``)."""

    name: str
    module: Any | None  # torch.nn.Module in eval mode, or None for ONNX sources
    onnx_path: Path | None
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    preset: str  # default preprocessing preset for this model
    source: dict[str, Any] = field(default_factory=dict)
    # The ONNX file's model as read to describe it (onnx.ModelProto): the export stage takes it, so a build reads the
    # file once. None for a PyTorch source, or once taken.
    onnx_model: Any | None = field(default=None, repr=False, compare=False)
