"""Shared fixtures: tiny residual models built on the CPU, exported and simplified once per session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.export import ExportConfig, export_onnx
from rescompile.models.resnet_cifar import BasicBlock
from rescompile.quantize import insert_qdq, plan_qdq
from rescompile.simplify import simplify


class TinyResNet(nn.Module):
    """Stem conv, ``blocks`` BasicBlocks (the first optionally downsampling), pool, fc."""

    def __init__(self, blocks: int = 2, downsample: bool = True, in_channels: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        layers = []
        planes = 8
        for i in range(blocks):
            out = 16 if (downsample and i == 0) else planes
            layers.append(BasicBlock(planes, out, stride=2 if (downsample and i == 0) else 1))
            planes = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(planes, classes))
        torch.manual_seed(0)
        for m in self.modules():  # non-trivial BN statistics so folding is exercised
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def tiny_resnet(blocks: int = 2, downsample: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet(blocks, downsample).eval()


TINY_SHAPE = (1, 16, 16)


@pytest.fixture(scope="session")
def tiny_module() -> nn.Module:
    return tiny_resnet()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_module: nn.Module) -> onnx.ModelProto:
    model, _ = export_onnx(tiny_module, TINY_SHAPE, ExportConfig())
    return simplify(model, TINY_SHAPE).model


@pytest.fixture(scope="session")
def tiny_data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((24, *TINY_SHAPE)).astype(np.float32)


@dataclass(frozen=True)
class Quantized:
    plan: Any  # QuantPlan
    ranges: dict[str, Any]
    model: onnx.ModelProto


@pytest.fixture(scope="session")
def quantize_tiny(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> Callable[..., Quantized]:
    """The tiny ResNet quantized under a policy with ``max`` ranges from ``tiny_data``.

    Computed once per policy; every call returns its own copy of the INT8 model, so a test may edit it.
    """
    cache: dict[str, tuple[Any, dict[str, Any], bytes]] = {}

    def get(policy: str = "tensorrt") -> Quantized:
        if policy not in cache:
            plan = plan_qdq(tiny_onnx, policy)
            ranges = compute_ranges(collect_stats(tiny_onnx, plan.calibrated_tensors, [tiny_data]), "max")
            cache[policy] = (plan, ranges, insert_qdq(tiny_onnx, plan, ranges).SerializeToString())
        plan, ranges, data = cache[policy]
        return Quantized(plan, ranges, onnx.ModelProto.FromString(data))

    return get


@pytest.fixture(scope="session")
def tiny_int8_path(quantize_tiny: Callable[..., Quantized], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ResNet's ``tensorrt`` INT8 Q/DQ model as a file."""
    path = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    onnx.save(quantize_tiny("tensorrt").model, str(path))
    return path


@pytest.fixture()
def tiny_npz(tmp_path: Path) -> Path:
    """A small labelled uint8 image set for the tiny model (1x16x16, 4 classes)."""
    rng = np.random.default_rng(2)
    path = tmp_path / "tiny.npz"
    np.savez_compressed(path, images=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 40))
    return path
