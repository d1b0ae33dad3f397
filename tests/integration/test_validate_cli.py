"""``rescompile validate``, ``compare`` and ``build`` gates end to end through the CLI, on tiny models."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.quantize import Policy
from tests.builds import LATENCY_RUNS

BROKEN = "/blocks/blocks.0/relu/Relu_output_0"  # read only by BLAMED
BLAMED = "/blocks/blocks.0/conv2/Conv"
FAST = ["--latency-batch", "1", *LATENCY_RUNS, "-q"]

runner = CliRunner()


def _schema_errors(path: Path) -> list[str]:
    if importlib.util.find_spec("jsonschema") is None:
        return []
    from rescompile.validate.schema import schema_errors

    return schema_errors(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_onnx, quantize_tiny):
    """FP32, INT8 and broken INT8 (one activation scale x100) ONNX files of the tiny ResNet."""
    folder = tmp_path_factory.mktemp("models")
    int8 = quantize_tiny(Policy.TENSORRT).model
    broken = onnx.ModelProto.FromString(int8.SerializeToString())
    (scale,) = [t for t in broken.graph.initializer if t.name == f"{BROKEN}_scale"]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(100), scale.name))
    paths = {}
    for name, model in (("fp32", tiny_onnx), ("int8", int8), ("broken", broken)):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(model, paths[name])
    return paths


def _validate(models, candidate: str, out: Path, val: Path, *extra: str):
    args = ["validate", str(models[candidate]), "--reference", str(models["fp32"]), "--val", str(val), "--out", str(out), *FAST, *extra]
    return runner.invoke(app, args)


def test_validate_passes_gates_and_writes_every_report(models, tiny_npz, tmp_path):
    out = tmp_path / "val"
    res = _validate(models, "int8", out, tiny_npz, "--min-agreement", "90", "--min-cosine", "0.999", "--max-top1-drop", "5")
    assert res.exit_code == 0, res.output
    assert "PASS min-agreement: agreement.top1 = " in res.output and "PASS min-cosine" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["samples"] == 40 and report["candidate"] == "onnxruntime-int8"
    assert report["baseline"] == "onnxruntime-fp32" and set(report["speedup_int8_vs_fp32_p50"]) == {"1"}
    assert _schema_errors(out / "report.json") == []
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("3", "0")


def test_broken_scale_fails_gates_and_layerwise_blames_its_layer(models, tiny_npz, tmp_path):
    out = tmp_path / "val"
    res = _validate(models, "broken", out, tiny_npz, "--min-agreement", "90", "--min-cosine", "0.999", "--layerwise")
    assert res.exit_code == 1, res.output
    assert "PASS min-agreement" in res.output  # passing gates are listed too
    assert "FAIL min-cosine: agreement.cosine_mean = " in res.output and "threshold >= 0.999" in res.output
    assert f"most error added by {BLAMED}" in res.output and f"--keep-fp '{BLAMED}'" in res.output
    report = json.loads((out / "report.json").read_text())
    assert not report["passed"] and report["layerwise"]["ranking"][0] == BLAMED
    assert report["layerwise"]["suggested_keep_fp"] == [BLAMED]
    assert _schema_errors(out / "report.json") == []
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    assert {c.get("name"): c.find("failure") is not None for c in cases} == {"min-agreement": False, "min-cosine": True}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-cosine", "2"], "--min-cosine 2 is out of range"),
        (["--max-top1-drop", "-0.5"], "--max-top1-drop -0.5 is out of range"),
        (["--max-p99-ms", "0"], "--max-p99-ms 0 is out of range"),
        (["--min-agreement", "nan"], "--min-agreement must be a number"),
        (["--gate-batch", "8"], "--gate-batch 8 is not a timed batch size"),
    ],
)
def test_invalid_thresholds_exit_2_without_traceback(models, tiny_npz, tmp_path, args, message):
    res = _validate(models, "int8", tmp_path / "val", tiny_npz, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "val").exists()  # rejected before any work


def test_gates_from_yaml_with_flag_override(models, tiny_npz, tmp_path):
    recipe = tmp_path / "gates.yaml"
    recipe.write_text("min-agreement: 90\nmin-cosine: 0.999\n")
    res = _validate(models, "broken", tmp_path / "a", tiny_npz, "--gates", str(recipe))
    assert res.exit_code == 1 and "FAIL min-cosine" in res.output
    res = _validate(models, "broken", tmp_path / "b", tiny_npz, "--gates", str(recipe), "--min-cosine", "0.9")
    assert res.exit_code == 0, res.output
    recipe.write_text("min-agreemnt: 90\n")
    res = _validate(models, "int8", tmp_path / "c", tiny_npz, "--gates", str(recipe))
    assert res.exit_code == 2 and "unknown gate 'min-agreemnt'" in res.output


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_plan_candidate_without_tensorrt_exits_3(models, tiny_npz, tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    res = runner.invoke(
        app, ["validate", str(plan), "--reference", str(models["fp32"]), "--val", str(tiny_npz), "--out", str(tmp_path / "val")]
    )
    assert res.exit_code == 3, res.output
    assert "tensorrt" in res.output and "pip install 'rescompile[tensorrt]'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "val").exists()


def test_saved_reference_validates_without_torch(models, tiny_npz, tmp_path):
    ref = tmp_path / "ref.npz"
    res = _validate(models, "int8", tmp_path / "a", tiny_npz, "--save-reference", str(ref))
    assert res.exit_code == 0, res.output
    with np.load(ref, allow_pickle=False) as z:
        assert z["inputs"].shape == (40, 1, 16, 16) and z["logits"].shape == (40, 4) and z["labels"].shape == (40,)
    # A device without PyTorch: importing torch fails, the saved reference still validates the candidate.
    code = "import sys; sys.modules['torch'] = None; from rescompile.cli import main; sys.argv = sys.argv[1:]; main()"
    out = tmp_path / "b"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "rescompile",
            "validate",
            str(models["broken"]),
            "--reference",
            str(ref),
            "--min-cosine",
            "0.999",
            "--out",
            str(out),
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL min-cosine" in proc.stdout and "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["reference"] == "onnxruntime-fp32" and report["baseline"] is None and report["samples"] == 40


def test_compare_exit_codes(models, tiny_npz, tmp_path):
    assert _validate(models, "int8", tmp_path / "old", tiny_npz, "--min-cosine", "0.999").exit_code == 0
    assert _validate(models, "broken", tmp_path / "new", tiny_npz, "--min-cosine", "0.999").exit_code == 1
    old, new = tmp_path / "old" / "report.json", tmp_path / "new" / "report.json"
    same = runner.invoke(app, ["compare", str(old), str(old), "--ignore-latency"])
    assert same.exit_code == 0 and "no regression" in same.output
    md = tmp_path / "compare.md"
    worse = runner.invoke(app, ["compare", str(old), str(new), "--ignore-latency", "--md", str(md)])
    assert worse.exit_code == 1, worse.output
    assert "agreement.cosine_mean" in worse.output and "newly failing" in worse.output
    assert md.read_text().startswith("# rescompile compare: 2 regression(s)")
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    bad = runner.invoke(app, ["compare", str(junk), str(new)])
    assert bad.exit_code == 2 and "not a rescompile report" in bad.output


def test_build_gates_pass_and_fail_with_all_reports(models, tiny_npz, tmp_path):
    common = ["build", str(models["fp32"]), "--calib", str(tiny_npz), "--val", str(tiny_npz), *FAST]
    ok = runner.invoke(app, [*common, "--out", str(tmp_path / "ok"), "--min-agreement", "90", "--max-p99-ms", "1e9"])
    assert ok.exit_code == 0, ok.output
    assert "PASS min-agreement" in ok.output and "PASS max-p99-ms: latency.candidate.batch1.p99_ms" in ok.output
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert {"junit.xml", "report.html", "report.json", "report.md"} <= set(manifest["artifacts"])
    assert _schema_errors(tmp_path / "ok" / "report.json") == []

    ref = tmp_path / "ref.npz"
    bad = runner.invoke(
        app,
        [
            *common,
            "--out",
            str(tmp_path / "bad"),
            "--min-agreement",
            "90",
            "--min-cosine",
            "1.0",
            "--layerwise",
            "--auto-fallback",
            "1",
            "--save-reference",
            str(ref),
        ],
    )
    assert bad.exit_code == 1, bad.output
    assert "PASS min-agreement" in bad.output and "FAIL min-cosine" in bad.output
    failed = tmp_path / "bad.failed"  # a build that fails a gate is published beside --out
    report = json.loads((failed / "report.json").read_text())
    fb = report["fallback"]
    assert fb["limit"] == 1 and fb["steps"] and sum(s["accepted"] for s in fb["steps"]) == len(fb["kept_fp"]) <= 1
    plan = json.loads((failed / "qdq_plan.json").read_text())
    assert set(fb["kept_fp"]) <= set(plan["kept_fp"])  # the published plan and model are the fallback's
    # the report's accuracy is the gate split's: the ranking split chose the units (docs/fallback.md)
    assert fb["split"]["ranking_samples"] == fb["split"]["gate_samples"] == 20 and report["samples"] == 20
    assert "gate split" in report["source"] and any("gate split" in n for n in report["notes"])
    assert "| step | unit | result |" in (failed / "report.md").read_text()
    assert report["layerwise"]["layers"] and _schema_errors(failed / "report.json") == []
    suite = ET.parse(failed / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert ref.is_file()
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "x"), "--auto-fallback", "2"])
    assert res.exit_code == 2 and "needs an accuracy gate" in res.output


def test_unknown_cuda_lib_is_a_usage_error_before_any_work(models, tiny_npz, tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    res = runner.invoke(
        app,
        [
            "validate",
            str(plan),
            "--reference",
            str(models["fp32"]),
            "--val",
            str(tiny_npz),
            "--out",
            str(tmp_path / "val"),
            "--cuda-lib",
            "cupy",
        ],
    )
    assert res.exit_code == 2, res.output
    assert "--cuda-lib 'cupy': expected one of auto, cuda-python, pycuda, torch" in " ".join(res.output.split())
    assert not (tmp_path / "val").exists()
