"""Scale-out on a real local Ray cluster (loopback, 2 CPUs): sharded results equal the single-process ones exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from rescompile.calibrate.collect import CollectSettings  # noqa: E402
from rescompile.calibrate.ranges import METHODS, calibration_result  # noqa: E402
from rescompile.calibrate.run import calibrate  # noqa: E402
from rescompile.cli import app  # noqa: E402
from rescompile.config import Gates, RaySettings  # noqa: E402
from rescompile.data.sources import open_source  # noqa: E402
from rescompile.errors import UsageError  # noqa: E402
from rescompile.quantize import plan_qdq  # noqa: E402
from tests.builds import LATENCY_RUNS  # noqa: E402
from tests.models import tiny_gray  # noqa: E402

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray for the module (tests/conftest.py)


def test_sharded_calibration_on_ray_gives_the_same_ranges_for_every_method(tiny_onnx: onnx.ModelProto, tiny_npz: Path) -> None:
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    src = open_source(tiny_npz)
    kw = {"collect": CollectSettings(batch_size=8, threads=1, sample=64)}
    one = calibrate(tiny_onnx, tensors, src, tiny_gray(), method="auto", **kw)  # type: ignore[arg-type]
    done: list[int] = []
    sharded = calibrate(tiny_onnx, tensors, src, tiny_gray(), method="auto", ray=RaySettings(shards=3), on_batch=done.append, **kw)  # type: ignore[arg-type]
    assert sorted(done) == [8, 16, 16] and sum(done) == src.count  # three shards on batch boundaries, all reported
    assert sharded.ranges_json == one.ranges_json and sharded.stats_npz == one.stats_npz
    assert one.stats is not None and sharded.stats is not None
    for method in METHODS:
        a = calibration_result(one.stats, method, src.count, sample=64).to_json()
        assert calibration_result(sharded.stats, method, src.count, sample=64).to_json() == a


def test_data_checks_see_the_same_inputs_on_ray(tiny_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    x = np.random.default_rng(3).uniform(0, 255, (20, 1, 16, 16)).astype(np.float32)  # floats that look like raw pixels
    np.save(tmp_path / "raw.npy", x)
    src = open_source(tmp_path / "raw.npy")
    tensors = [t for t in plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors if t != tiny_onnx.graph.input[0].name]
    one = calibrate(tiny_onnx, tensors, src, tiny_gray(), collect=CollectSettings(batch_size=4))
    sharded = calibrate(tiny_onnx, tensors, src, tiny_gray(), collect=CollectSettings(batch_size=4), ray=RaySettings(shards=3))
    assert any("raw" in w.message for w in one.warnings)  # seen by the input watch (the input itself is not calibrated)
    assert [w.message for w in sharded.warnings] == [w.message for w in one.warnings]
    assert sharded.ranges_json == one.ranges_json


def test_calibrate_cli_with_ray_writes_identical_ranges(tiny_onnx: onnx.ModelProto, tiny_npz: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, str(model))
    common = [
        "calibrate",
        str(model),
        "--calib",
        str(tiny_npz),
        "--method",
        "entropy",
        "--batch-size",
        "4",
        "-q",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    ]
    a = runner.invoke(app, [*common, "--out", str(tmp_path / "one.json"), "--stats", str(tmp_path / "one.npz")])
    assert a.exit_code == 0, a.output
    b = runner.invoke(
        app,
        [*common, "--ray", "--shards", "4", "--out", str(tmp_path / "ray.json"), "--stats", str(tmp_path / "ray.npz")],
        env={"COLUMNS": "300"},
    )
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
        calibrate(tiny_onnx, tensors, src, tiny_gray(), collect=CollectSettings(batch_size=4), ray=RaySettings(shards=3))


def _tiny_models(tmp_path: Path, tiny_onnx: onnx.ModelProto, quantize_tiny) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(tiny_onnx, str(fp32))
    model = quantize_tiny("tensorrt").model
    for t in model.graph.initializer:  # a far coarser activation scale: the INT8 model really disagrees
        if t.name == "/blocks/blocks.0/relu/Relu_output_0_scale":
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(100), t.name))
    onnx.save(model, str(int8))
    return fp32, int8


_TIMED = ("latency", "latency_plan", "speedup_int8_vs_fp32_p50", "memory", "timings_s", "settings", "scale")


def test_sharded_validation_on_ray_gives_every_metric_of_one_process(
    tiny_onnx: onnx.ModelProto,
    quantize_tiny,  # type: ignore[no-untyped-def]
    tiny_npz: Path,
    tmp_path: Path,
) -> None:
    import json

    fp32, int8 = _tiny_models(tmp_path, tiny_onnx, quantize_tiny)
    common = [
        "validate",
        str(int8),
        "--reference",
        str(fp32),
        "--val",
        str(tiny_npz),
        "--batch-size",
        "6",
        "--latency-batch",
        "1",
        *LATENCY_RUNS,
        "-q",
    ]
    a = runner.invoke(app, [*common, "--out", str(tmp_path / "one")])
    assert a.exit_code == 0, a.output
    b = runner.invoke(app, [*common, "--ray", "--shards", "3", "--out", str(tmp_path / "ray")])
    assert b.exit_code == 0, b.output
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    sharded = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert one["agreement"]["cosine_min"] < 0.999 and one["agreement"]["max_abs_error"] > 0.01  # real INT8 errors to reproduce
    assert {k: v for k, v in sharded.items() if k not in _TIMED} == {k: v for k, v in one.items() if k not in _TIMED}
    where = sharded["scale"]["latency_measured_on"]
    assert sharded["scale"]["ray"] == "local Ray" and where["host"] and where["worker_pid"] and "scale" not in one
    assert [r["role"] for r in sharded["latency"]] == [r["role"] for r in one["latency"]]
    from rescompile.validate.schema import schema_errors

    assert schema_errors(sharded) == []


def test_reference_logits_of_a_pytorch_module_are_sharded_in_order(tiny_data: np.ndarray) -> None:
    import torch
    from torch import nn

    from rescompile.runtime.runners import TorchRunner

    torch.manual_seed(0)  # built from torch.nn only: Ray workers unpickle it without the tests' conftest
    tiny_module = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()
    from rescompile.validate.reference import ValidationInputs
    from rescompile.validate.run import ValidateSettings, compute_reference

    labels = np.arange(len(tiny_data)) % 4
    inputs = ValidationInputs.from_arrays("tiny", tiny_data, labels)
    local = compute_reference(TorchRunner(tiny_module), inputs, ValidateSettings(batch_size=5), keep_inputs=True)
    sharded = compute_reference(
        TorchRunner(tiny_module), inputs, ValidateSettings(batch_size=5, ray=RaySettings(shards=4)), keep_inputs=True
    )
    assert np.array_equal(sharded.logits, local.logits) and np.array_equal(sharded.labels, labels)  # type: ignore[arg-type]
    assert np.array_equal(sharded.inputs, tiny_data)  # type: ignore[arg-type]


def test_sweep_on_ray_resumes_isolates_failures_and_build_with_ray_matches(tmp_path: Path) -> None:
    import json

    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    import torch

    from rescompile.models.resnet_cifar import cifar_resnet

    torch.manual_seed(0)  # fixed weights: a build without --weights would start from a fresh random model in each process
    torch.save(cifar_resnet("resnet20", 4, 1).state_dict(), tmp_path / "weights.pt")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""
base: {{in_channels: 1, input_size: 16, num_classes: 4, calib: {data}, val: {data}, latency_runs: 3, weights: {tmp_path / "weights.pt"},
        latency_batches: [1], threads: 1, batch_size: 4}}
grid:
  model: [resnet20, no-such-model]
  policy: [onnxruntime]
""")
    out = tmp_path / "sw"
    first = runner.invoke(app, ["sweep", str(spec), "--out", str(out)], env={"COLUMNS": "300"})
    assert first.exit_code == 1, first.output  # one build failed: the sweep says so, after the other finished
    doc = json.loads((out / "sweep.json").read_text())
    status = {r["params"]["model"]: r["status"] for r in doc["results"]}
    assert status == {"resnet20": "ok", "no-such-model": "error"}
    (ok,) = [r for r in doc["results"] if r["status"] == "ok"]
    built = Path(ok["folder"])
    assert (built / "report.json").is_file() and ok["p50_ms"] > 0 and ok["top1"] is not None and ok["pareto"]
    assert built.parent == out / "builds" and built.name == ok["key"][:12]
    assert "<svg" in (out / "sweep.html").read_text() and 'class="pareto"' in (out / "sweep.html").read_text()
    assert "no-such-model" in (out / "sweep.md").read_text()
    again = runner.invoke(app, ["sweep", str(spec), "--out", str(out)], env={"COLUMNS": "300"})
    assert again.exit_code == 1, again.output
    assert again.output.count("reused") == 1 and again.output.count(" error: ") == 1  # finished build skipped, failed one retried

    # The same build with its calibration and validation sharded on Ray: the same ranges and metrics.
    from rescompile.config import BuildConfig
    from rescompile.pipeline import build

    cfg = json.loads((built / "manifest.json").read_text())["config"]
    build(
        BuildConfig.from_flat(
            **{
                **cfg,
                "out": tmp_path / "b",
                "ray": True,
                "ray_shards": 3,
                "keep_fp": tuple(cfg["keep_fp"]),
                "weights": Path(cfg["weights"]),
                "latency_batches": tuple(cfg["latency_batches"]),
                "gates": Gates(**cfg["gates"]),
            }
        )
    )
    assert (tmp_path / "b" / "ranges.json").read_bytes() == (built / "ranges.json").read_bytes()
    one, sharded = json.loads((built / "report.json").read_text()), json.loads((tmp_path / "b" / "report.json").read_text())
    for k in ("accuracy", "agreement", "per_class", "samples"):
        assert sharded[k] == one[k]
    assert sharded["scale"]["latency_measured_on"]["host"]


def test_shards_run_with_the_thread_count_of_one_process(tiny_data: np.ndarray) -> None:
    """Float reductions are ordered by the thread count (resnet50: 3e-5 apart between 1 and 2 threads), so every
    shard must run with the single-process runner's count, given or default, for the logits to be bit-identical."""
    import sys

    import torch
    from ray import cloudpickle

    from rescompile.runtime.runners import TorchRunner, default_threads
    from rescompile.validate.reference import ValidationInputs
    from rescompile.validate.run import ValidateSettings, compute_reference

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1), float(torch.get_num_threads()))

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    inputs = ValidationInputs.from_arrays("tiny", tiny_data, None)
    for threads in (None, 1):
        local = compute_reference(TorchRunner(Probe(), threads=threads), inputs, ValidateSettings(batch_size=5))
        sharded = compute_reference(
            TorchRunner(Probe(), threads=threads), inputs, ValidateSettings(batch_size=5, ray=RaySettings(shards=3))
        )
        assert set(local.logits.ravel()) == {float(threads or default_threads())}
        assert np.array_equal(sharded.logits, local.logits)


def test_onnx_runtime_runners_name_their_thread_count_explicitly(tiny_onnx: onnx.ModelProto) -> None:
    from rescompile.runtime.runners import OnnxRuntimeRunner, default_threads

    for given, want in ((None, default_threads()), (1, 1)):
        r = OnnxRuntimeRunner(tiny_onnx, threads=given)
        assert r.threads == want and r.session.get_session_options().intra_op_num_threads == want
