"""`build` and `validate` without --val on a non-demo model: held-out split, in-sample, label gates (exit 2)."""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import rescompile
from rescompile.cli import app
from rescompile.config import Gates
from rescompile.data.holdout import choose_data
from rescompile.errors import UsageError
from tests.builds import LATENCY_RUNS

FAST = ["--latency-batch", "1", *LATENCY_RUNS, "-q"]
runner = CliRunner()


def _schema_errors(report: dict) -> list[str]:
    if importlib.util.find_spec("jsonschema") is None:
        return []
    from rescompile.validate.schema import schema_errors

    return schema_errors(report)


def _junit_props(path: Path) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in ET.parse(path).getroot().iter("property")}


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_onnx: onnx.ModelProto) -> Path:
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    onnx.save(tiny_onnx, str(path))
    return path


@pytest.fixture(scope="module")
def calib300(tmp_path_factory) -> tuple[Path, float]:
    """300 unlabelled float inputs; one held-out sample holds a value far beyond every other sample."""
    path = tmp_path_factory.mktemp("d") / "calib.npy"
    x = np.random.default_rng(0).standard_normal((300, 1, 16, 16)).astype(np.float32)
    np.save(path, x)
    held = np.asarray(choose_data("tiny.onnx", str(path), None).val.index)  # the split depends on count and seed only
    x[held[0], 0, 0, 0] = 50.0
    np.save(path, x)
    return path, float(np.abs(np.delete(x, held, axis=0)).max())


@pytest.fixture(scope="module")
def held_out_build(model, calib300, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("b") / "held"
    result = runner.invoke(app, ["build", str(model), "--calib", str(calib300[0]), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    return out, result.output


def test_build_without_val_validates_on_a_held_out_split_not_used_for_calibration(held_out_build, calib300):
    out, console = held_out_build
    report = json.loads((out / "report.json").read_text())
    v = report["validation"]
    assert (v["mode"], v["samples"], v["calibration_samples"], v["held_out"], v["in_sample"]) == ("held-out", 60, 240, 60, False)
    assert report["samples"] == 60 and report["calibration"]["samples"] == 240
    # the held-out extreme (50.0) did not reach calibration: the input range is the other samples' max
    ranges = json.loads((out / "ranges.json").read_text())
    assert ranges["tensors"]["input"]["amax"] == pytest.approx(calib300[1], rel=1e-6) and calib300[1] < 10
    assert "held-out split" in " ".join(console.split())
    assert "held-out split" in (out / "report.md").read_text()
    assert "held-out split" in (out / "report.html").read_text()
    props = _junit_props(out / "junit.xml")
    assert props["validation.mode"] == "held-out" and props["validation.in_sample"] == "false"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["val"] is None and manifest["data"]["validation_choice"]["mode"] == "held-out"
    assert _schema_errors(report) == []


def test_validate_a_build_folder_without_val_reuses_the_same_split(held_out_build, tmp_path):
    out, _ = held_out_build
    built = json.loads((out / "report.json").read_text())
    result = runner.invoke(app, ["validate", str(out), "--out", str(tmp_path / "v"), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["validation"]["mode"] == "held-out" and report["source"] == built["source"]
    assert report["agreement"]["cosine_mean"] == pytest.approx(built["agreement"]["cosine_mean"], rel=1e-6)


def test_validate_a_build_folder_refuses_label_gates_on_unlabelled_split(held_out_build, tmp_path):
    out, _ = held_out_build
    result = runner.invoke(app, ["validate", str(out), "--max-top1-drop", "1", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "--max-top1-drop needs labelled validation data" in result.stderr
    assert not (tmp_path / "v").exists()


def test_validate_a_file_without_val_for_a_non_demo_model_exits_2(held_out_build, tmp_path):
    out, _ = held_out_build
    result = runner.invoke(
        app, ["validate", str(out / "model.int8.onnx"), "--reference", str(out / "model.simplified.onnx"), "--out", str(tmp_path / "v")]
    )
    assert result.exit_code == 2 and "--val is needed" in result.stderr and "Traceback" not in result.stderr


def test_small_calibration_set_validates_in_sample_and_says_so(model, tmp_path):
    data = tmp_path / "small.npz"
    rng = np.random.default_rng(3)
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    out = tmp_path / "o"
    result = runner.invoke(app, ["build", str(model), "--calib", str(data), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["mode"] == "in-sample" and report["validation"]["in_sample"] is True
    assert report["samples"] == 16 and report["source"].endswith("(in-sample)")
    assert report["accuracy"]["candidate"]["top1"] is None and report["per_class"] == []  # label-free, labels dropped
    assert "in-sample validation samples" in " ".join(result.output.split()) and "IN-SAMPLE" in result.output
    assert "> **Validation: IN-SAMPLE:" in (out / "report.md").read_text()
    assert 'id="in-sample"' in (out / "report.html").read_text()
    assert _junit_props(out / "junit.xml")["validation.in_sample"] == "true"
    assert _schema_errors(report) == []


def test_label_gate_without_labels_exits_2_before_any_work(model, calib300, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, ["build", str(model), "--calib", str(calib300[0]), "--max-top1-drop", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output + result.stderr
    assert "--max-top1-drop needs labelled validation data" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.partial-*"))
    unlabelled_val = runner.invoke(
        app, ["build", str(model), "--calib", str(calib300[0]), "--val", str(calib300[0]), "--max-top1-drop", "1", "--out", str(out)]
    )
    assert unlabelled_val.exit_code == 2 and "has no labels" in unlabelled_val.stderr


def test_labelled_held_out_split_serves_the_top1_gate(model, tmp_path):
    data = tmp_path / "labelled.npz"
    rng = np.random.default_rng(4)
    np.savez(data, images=rng.integers(0, 256, (260, 16, 16), dtype=np.uint8), labels=np.arange(260) % 4)
    out = tmp_path / "o"
    result = runner.invoke(app, ["build", str(model), "--calib", str(data), "--max-top1-drop", "100", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["mode"] == "held-out" and report["validation"]["labelled"] is True
    assert report["samples"] == 52 and report["accuracy"]["top1_drop"] is not None
    assert [g["name"] for g in report["gates"]] == ["max-top1-drop"]


def test_python_api_same_defaults(model, calib300, tmp_path):
    result = rescompile.build(model=str(model), calib=str(calib300[0]), out=tmp_path / "api", latency_runs=3, latency_batches=(1,))
    assert result.report["validation"]["mode"] == "held-out" and result.report["samples"] == 60
    with pytest.raises(UsageError, match="--max-top1-drop needs labelled"):
        rescompile.build(model=str(model), calib=str(calib300[0]), out=tmp_path / "api2", gates=Gates(max_top1_drop=1.0))
    assert not (tmp_path / "api2").exists()


def test_seed_option_moves_the_split(model, calib300, tmp_path):
    out = tmp_path / "s"
    result = runner.invoke(app, ["build", str(model), "--calib", str(calib300[0]), "--seed", "7", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["seed"] == 7 and report["source"].endswith("seed 7]")
    seven = choose_data("tiny.onnx", str(calib300[0]), None, seed=7)
    assert not np.array_equal(seven.val.index, choose_data("tiny.onnx", str(calib300[0]), None, seed=0).val.index)
    x = np.load(calib300[0])
    ranges = json.loads((out / "ranges.json").read_text())  # calibrated on exactly the seed-7 calibration rows
    assert ranges["tensors"]["input"]["amax"] == pytest.approx(float(np.abs(x[seven.calibration.index]).max()), rel=1e-6)


def test_validate_a_build_folder_whose_calibration_data_is_gone_says_so(model, tmp_path):
    data = tmp_path / "gone.npy"
    np.save(data, np.random.default_rng(5).standard_normal((20, 1, 16, 16)).astype(np.float32))
    out = tmp_path / "b"
    assert runner.invoke(app, ["build", str(model), "--calib", str(data), "--out", str(out), *FAST]).exit_code == 0
    data.unlink()
    result = runner.invoke(app, ["validate", str(out), "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "cannot re-create the build's validation data" in result.stderr
    assert "--val" in result.stderr
