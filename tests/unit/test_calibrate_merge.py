"""Statistics collected in pieces merge exactly: shards, batch sizes and chunking change no byte of the ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from rescompile.calibrate.cache import stats_to_bytes
from rescompile.calibrate.collect import CollectSettings, TensorStats, collect_stats
from rescompile.calibrate.merge import merge_stats, merge_tensor
from rescompile.calibrate.ranges import METHODS, calibration_result
from rescompile.config import ray_settings
from rescompile.errors import UsageError
from rescompile.quantize import plan_qdq
from rescompile.scale.cluster import shard_bounds


def _data() -> np.ndarray:
    x = np.random.default_rng(7).standard_normal((24, 1, 16, 16)).astype(np.float32)
    x[17:19] *= 300.0  # a later shard sees far larger values: its histogram edge grows past the others'
    x[3, 0, 0, :4] = [0.0, -0.0, 1e-42, -1e-42]  # signed zeros and subnormals: binned exactly, zeros stored as +0.0
    return x


def _collect(
    model: onnx.ModelProto, tensors: list[str], x: np.ndarray, batch: int, budget: int, start: int = 0, sample: int | None = 16
) -> dict[str, TensorStats]:
    batches = (x[i : i + batch] for i in range(0, len(x), batch))
    return collect_stats(model, tensors, batches, CollectSettings(threads=1, memory_budget=budget, sample=sample), start=start)


@pytest.mark.parametrize("sample", [16, None])
def test_sharded_statistics_equal_one_pass_for_every_method(tiny_onnx: onnx.ModelProto, sample: int | None) -> None:
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    x = _data()
    whole = _collect(tiny_onnx, tensors, x, batch=24, budget=64 << 20, sample=sample)
    cuts = [(0, 5), (5, 6), (6, 17), (17, 24)]
    parts = [_collect(tiny_onnx, tensors, x[a:b], batch=3, budget=4096, start=a, sample=sample) for a, b in cuts]
    merged = merge_stats(parts[::-1])  # order of arrival does not matter either
    assert len({s.edge for s in parts[0].values()} ^ {s.edge for s in parts[3].values()}) > 0  # edges really differed
    assert any(s.hist_count < s.count for s in whole.values()) == (sample is not None)
    assert stats_to_bytes(merged, {}, 24, sample) == stats_to_bytes(whole, {}, 24, sample)
    for method in METHODS:
        one = calibration_result(whole, method, 24, sample=sample).to_json()
        assert calibration_result(merged, method, 24, sample=sample).to_json() == one


def test_sampled_values_follow_the_image_index_not_the_batching(tiny_onnx: onnx.ModelProto) -> None:
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    x = _data()[:12]
    a = _collect(tiny_onnx, tensors, x, batch=12, budget=64 << 20)
    b = _collect(tiny_onnx, tensors, x, batch=1, budget=1024)
    assert stats_to_bytes(a, {}, 12, 16) == stats_to_bytes(b, {}, 12, 16)
    # another offset is another sample: the phase is the data-set index of the image
    c = _collect(tiny_onnx, tensors, x, batch=12, budget=64 << 20, start=1)
    assert any(not np.array_equal(a[t].hist, c[t].hist) for t in tensors)


def test_merge_refuses_mismatched_shards() -> None:
    with pytest.raises(UsageError):
        merge_tensor([TensorStats("a", 256), TensorStats("b", 256)])
    with pytest.raises(UsageError):
        merge_tensor([TensorStats("a", 256), TensorStats("a", 512)])
    with pytest.raises(UsageError):
        merge_stats([{"a": TensorStats("a")}, {"b": TensorStats("b")}])
    empty = merge_tensor([TensorStats("a", 256), TensorStats("a", 256)])
    assert empty.count == 0 and empty.hist.size == 0


def test_shard_bounds_cover_the_set_on_batch_boundaries() -> None:
    assert shard_bounds(10, 3, 1) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(100, 3, 32) == [(0, 32), (32, 64), (64, 100)]
    assert shard_bounds(5, 8, 2) == [(0, 2), (2, 4), (4, 5)]
    assert shard_bounds(0, 4, 8) == [(0, 0)]
    for count, shards, align in [(1000, 7, 64), (33, 2, 4), (64, 64, 1)]:
        b = shard_bounds(count, shards, align)
        assert b[0][0] == 0 and b[-1][1] == count and all(p[1] == q[0] for p, q in zip(b, b[1:], strict=False))
        assert all(a % align == 0 for a, _ in b) and len(b) <= shards
    with pytest.raises(UsageError):
        shard_bounds(10, 0)


def test_ray_settings_from_flags() -> None:
    assert ray_settings(False, None) is None
    assert ray_settings(True, None, 4).shards == 4  # type: ignore[union-attr]
    assert ray_settings(False, "10.0.0.5:6379").address == "10.0.0.5:6379"  # type: ignore[union-attr]
    for bad in [(False, None, 2), (True, None, 0), (False, " ", None)]:
        with pytest.raises(UsageError):
            ray_settings(*bad)
    from rescompile.config import BuildConfig

    assert BuildConfig().ray is None and BuildConfig.from_flat(ray=True).ray.address is None  # type: ignore[union-attr]
    assert BuildConfig.from_flat(ray=True).replace(ray_shards=3).ray == ray_settings(True, None, 3)  # flat keys on top of a group
    with pytest.raises(UsageError, match="--shards needs --ray"):
        BuildConfig.from_flat(ray_shards=2)
    assert "ray" not in BuildConfig.from_flat(ray=True).to_dict()  # how a build runs is not part of what it is (manifest, sweep key)


def test_without_ray_the_ray_flags_exit_3_naming_the_extra(
    tiny_onnx: onnx.ModelProto,
    tiny_npz,
    tmp_path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from rescompile.cli import app
    from rescompile.config import RaySettings
    from rescompile.errors import MissingDependency
    from rescompile.scale.cluster import connect

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    with pytest.raises(MissingDependency) as err:
        connect(RaySettings())
    assert err.value.exit_code == 3 and err.value.hint == "pip install 'rescompile[ray]'"
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, str(model))
    args = ["calibrate", str(model), "--calib", str(tiny_npz), "--mean", "0.5", "--std", "0.25", "-q", "--out", str(tmp_path / "r.json")]
    res = CliRunner().invoke(app, [*args, "--ray"], env={"COLUMNS": "300"})
    assert res.exit_code == 3 and "rescompile[ray]" in res.output and "Traceback" not in res.output
    assert CliRunner().invoke(app, args).exit_code == 0  # without --ray nothing needs it
