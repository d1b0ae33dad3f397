"""Shared fixtures: tiny residual models built on the CPU, exported and simplified once per session; the session's one
demo build and its bundle. The only conftest: helpers live in tests/*.py modules, imported as ``from tests.xxx import``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from torch import nn

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.export import ExportConfig, export_onnx
from rescompile.quantize import insert_qdq, plan_qdq
from rescompile.simplify import simplify
from tests.builds import DemoBuild, build_demo
from tests.faults_fixtures import small_fs  # noqa: F401 (a fixture: a real small file system, docs/faults.md)
from tests.models import TINY_SHAPE, tiny_resnet


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


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for a module: 2 CPUs on 127.0.0.1, no dashboard; shut down after."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """The session's one passing demo build (tests.builds.DEMO_SMALL): read it, or copy it to change it."""
    return build_demo(tmp_path_factory.mktemp("demobuild"))


@pytest.fixture(scope="session")
def small_demo_build(demo_build: DemoBuild) -> Path:
    """The folder of :func:`demo_build`."""
    return demo_build.folder


@pytest.fixture(scope="session")
def demo_bundle(small_demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``demo.rcb``: 64 reference inputs, gated on top-1 agreement >= 90%."""
    from typer.testing import CliRunner

    from rescompile.cli import app

    out = tmp_path_factory.mktemp("bundle") / "demo.rcb"
    result = CliRunner().invoke(app, ["bundle", str(small_demo_build), "-o", str(out), "--reference-size", "64", "--min-agreement", "90"])
    assert result.exit_code == 0, result.output
    return out
