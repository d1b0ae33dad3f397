"""The full demo build through the CLI: every stage, real numbers, artifacts and manifest consistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.io import sha256_file
from rescompile.pipeline import ARTIFACTS
from tests.builds import LATENCY_RUNS, DemoBuild

runner = CliRunner()


def test_demo_build_succeeds_and_prints_summary(demo_build: DemoBuild):
    out, output = demo_build.out, demo_build.output  # the session's demo build (tests/conftest.py), printed with its --out
    assert "top-1" in output and "agreement" in output and str(out) in output
    # The default (tensorrt) placement timed on ONNX Runtime's CPU provider: the summary says what that latency means.
    assert "note:" in output


def test_demo_report_numbers_are_sane(small_demo_build: Path):
    report = json.loads((small_demo_build / "report.json").read_text())
    acc = report["accuracy"]
    assert report["samples"] == 200  # --val-size 200 (tests.builds.DEMO_SMALL)
    assert acc["reference"]["top1"] >= 90.0  # the shipped model is >= 91% on the full test set
    assert abs(acc["reference"]["top1"] - acc["candidate"]["top1"]) <= 1.0
    assert report["agreement"]["top1"] >= 97.0
    assert 0.99 < report["agreement"]["cosine_mean"] <= 1.0
    assert {(lat["runner"], lat["batch"], lat["runs"]) for lat in report["latency"]} == {
        ("onnxruntime-fp32", 1, 3),
        ("onnxruntime-int8", 1, 3),
    }
    assert all(lat["p50_ms"] > 0 and lat["p90_ms"] >= lat["p50_ms"] for lat in report["latency"])
    assert report["stages"]["residual_adds"] == 9 and report["stages"]["verify"]["ok"]
    # no gate asked for: only the default floor (docs/gates.md), each judged safe on its 95% interval
    assert report["passed"] and [g["name"] for g in report["gates"]] == ["floor_cosine", "floor_margin_agreement", "floor_top1_drop"]
    assert all(g["passed"] and g["mode"] == "floor" and g["side"] == "safe" for g in report["gates"])
    assert report["stages"]["policy"] == "tensorrt" and "--policy onnxruntime" in report["notes"][0]


def test_demo_artifacts_and_manifest_hashes(small_demo_build: Path):
    out = small_demo_build
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ARTIFACTS:
        assert (out / name).is_file(), name
        assert manifest["artifacts"][name]["sha256"] == sha256_file(out / name)
    for lib in ("rescompile", "torch", "onnx", "onnxruntime", "onnxsim"):
        assert manifest["versions"][lib]
    assert set(manifest["timings_s"]) >= {"export", "simplify", "calibrate", "quantize", "validate"}
    assert manifest["config"]["model"] == "demo"
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


BUILD_SECTIONS = {
    "schema",
    "source",
    "samples",
    "reference",
    "candidate",
    "baseline",
    "class_names",
    "accuracy",
    "agreement",
    "per_class",
    "latency",
    "speedup_int8_vs_fp32_p50",
    "memory",
    "settings",
    "latency_plan",
    "timings_s",
    "model",
    "stages",
    "validation",
    "notes",
    "warnings",
    "calibration",
    "gates",
    "passed",
}


def test_demo_report_has_the_build_sections_and_follows_the_schema(small_demo_build: Path):
    from rescompile.validate.schema import schema_errors

    out = small_demo_build
    report = json.loads((out / "report.json").read_text())
    assert set(report) == BUILD_SECTIONS and schema_errors(report) == []
    assert report["calibration"]["method"] == "max" and report["calibration"]["samples"] == 512
    assert report["model"] == {"name": "demo", "input_shape": [1, 28, 28], "num_classes": 10}


def test_validate_of_the_build_measures_like_the_build_and_judges_its_gate(small_demo_build: Path, tmp_path: Path):
    """One measuring path: the same INT8 model, reference (a build folder's default: its simplified FP32 model, the
    build's own reference) and data give the build's numbers; the gate judges them."""
    out = small_demo_build
    res = runner.invoke(
        app,
        [
            "validate",
            str(out),
            "--max-top1-drop",
            "1.0",
            *LATENCY_RUNS,
            "--latency-batch",
            "1",
            "-q",
            "--out",
            str(tmp_path / "v"),
        ],
    )
    assert res.exit_code == 0, res.output
    built = json.loads((out / "report.json").read_text())
    checked = json.loads((tmp_path / "v" / "report.json").read_text())
    assert (checked["samples"], checked["accuracy"], checked["agreement"]) == (built["samples"], built["accuracy"], built["agreement"])
    drop = built["accuracy"]["reference"]["top1"] - built["accuracy"]["candidate"]["top1"]
    assert [(g["name"], g["value"], g["passed"]) for g in checked["gates"]] == [("max-top1-drop", pytest.approx(drop), True)]
    assert checked["passed"] is True and "PASS max-top1-drop" in res.output
    assert checked["build"]["folder"] == str(out) and checked["model"]["reference"].endswith("model.simplified.onnx")
    assert checked["reference"] == built["reference"] == "onnxruntime-fp32"


def test_demo_int8_is_smaller_and_valid(small_demo_build: Path):
    out = small_demo_build
    int8 = onnx.load(str(out / "model.int8.onnx"))
    onnx.checker.check_model(int8)
    assert (out / "model.int8.onnx").stat().st_size < 0.4 * (out / "model.simplified.onnx").stat().st_size
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add"} <= ops


# Two builds byte-identical, and a failed gate published beside the passing build:
# tests/integration/test_build_integrity.py.


def test_python_api_builds_demo(tmp_path):
    import rescompile

    result = rescompile.build(out=tmp_path / "api", val_size=100, latency_runs=3, latency_batches=(1,))
    assert result.passed and (tmp_path / "api" / "model.int8.onnx").is_file()
    assert np.isfinite(result.report["agreement"]["cosine_mean"])


def test_onnxruntime_policy_build_carries_no_latency_note(tmp_path):
    import rescompile

    result = rescompile.build(out=tmp_path / "ort", policy="onnxruntime", val_size=100, latency_runs=3, latency_batches=(1,))
    assert result.passed and result.report["stages"]["policy"] == "onnxruntime"
    assert "notes" not in result.report
