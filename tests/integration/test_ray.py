"""Scale-out on a real local Ray cluster (loopback, 2 CPUs): sharded results equal the single-process ones exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from rescompile.calibrate.ranges import METHODS, calibration_result  # noqa: E402
from rescompile.calibrate.run import calibrate  # noqa: E402
from rescompile.cli import app  # noqa: E402
from rescompile.data.preprocess import Preprocess  # noqa: E402
from rescompile.data.sources import open_source  # noqa: E402
from rescompile.errors import UsageError  # noqa: E402
from rescompile.quantize import plan_qdq  # noqa: E402
from rescompile.scale.cluster import RaySettings  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    """One local Ray for the module: 2 CPUs, no dashboard; shut down after."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def _gray() -> Preprocess:
    return Preprocess(name="tiny", size=16, resize=16, mean=(0.5,), std=(0.25,), channels=1)


def test_sharded_calibration_on_ray_gives_the_same_ranges_for_every_method(tiny_onnx: onnx.ModelProto, tiny_npz: Path) -> None:
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    src = open_source(tiny_npz)
    kw = {"batch_size": 8, "sample": 64, "threads": 1}
    one = calibrate(tiny_onnx, tensors, src, _gray(), method="auto", **kw)  # type: ignore[arg-type]
    done: list[int] = []
    sharded = calibrate(tiny_onnx, tensors, src, _gray(), method="auto", ray=RaySettings(shards=3), on_batch=done.append, **kw)  # type: ignore[arg-type]
    assert sorted(done) == [8, 16, 16] and sum(done) == src.count  # three shards on batch boundaries, all reported
    assert sharded.ranges_json == one.ranges_json and sharded.stats_npz == one.stats_npz
    assert one.stats is not None and sharded.stats is not None
    for method in METHODS:
        a = calibration_result(one.stats, method, src.count, sample=64).to_json()
        assert calibration_result(sharded.stats, method, src.count, sample=64).to_json() == a


def test_calibrate_cli_with_ray_writes_identical_ranges(tiny_onnx: onnx.ModelProto, tiny_npz: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, str(model))
    common = ["calibrate", str(model), "--calib", str(tiny_npz), "--method", "entropy", "--batch-size", "4", "-q",
              "--mean", "0.5", "--std", "0.25"]  # fmt: skip
    a = runner.invoke(app, [*common, "--out", str(tmp_path / "one.json"), "--stats", str(tmp_path / "one.npz")])
    assert a.exit_code == 0, a.output
    b = runner.invoke(app, [*common, "--ray", "--shards", "4", "--out", str(tmp_path / "ray.json"), "--stats", str(tmp_path / "ray.npz")],
                      env={"COLUMNS": "300"})  # fmt: skip
    assert b.exit_code == 0, b.output
    assert "local Ray" in b.output
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "ray.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()


def test_bad_data_in_a_shard_is_the_usual_one_line_error(tiny_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((12, 1, 16, 16)).astype(np.float32)
    x[10, 0, 3, 3] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, x)  # .npy: read row by row in the shard that holds it, so the error rises inside a Ray task
    src = open_source(path)
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    with pytest.raises(UsageError, match="NaN or Inf"):
        calibrate(tiny_onnx, tensors, src, _gray(), batch_size=4, ray=RaySettings(shards=3))
