"""Degenerate calibration data through `rescompile build` on the demo: exit 2, or a warning in console and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.data.sources import open_source

runner = CliRunner()
FAST = ["--val-size", "100", "--latency-batch", "1", "-q"]


def run(args: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, args)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text
    return result.exit_code, text


def _calib(tmp_path: Path, name: str, x: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, np.asarray(x, np.float32))
    return path


@pytest.fixture(scope="module")
def demo_pixels() -> np.ndarray:
    return np.asarray(open_source("demo-calib", limit=64).arrays[:64], np.float32)[:, None]  # 64 x 1 x 28 x 28


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda px: np.zeros_like(px), "every calibration input value is 0"),
        (lambda px: px / 255.0 * 1e30, "calibration inputs reach |x| = 1e+30"),
    ],
)
def test_zero_and_huge_calibration_data_exit_2(tmp_path, demo_pixels, make, message):
    calib = _calib(tmp_path, "calib.npy", make(demo_pixels))
    code, text = run(["build", "--calib", str(calib), "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and message in text
    assert not (tmp_path / "o").exists()  # nothing published


def test_float_raw_pixels_warn_in_console_and_report(tmp_path, demo_pixels):
    from rescompile.validate.schema import schema_errors

    calib = _calib(tmp_path, "calib.npy", demo_pixels)  # 0-255 floats: fed unnormalized
    code, text = run(["build", "--calib", str(calib), "--out", str(tmp_path / "o"), *FAST])
    # calibrated on unnormalized pixels, INT8 is broken: the default floor catches it (exit 1, <out>.failed)
    assert code == 1 and "FAIL floor_cosine" in text, text
    assert "warning" in text and text.count("raw 0-255 pixels") == 1  # once: in the summary, not also live
    report = json.loads((tmp_path / "o.failed" / "report.json").read_text())
    assert [w["code"] for w in report["warnings"]] == ["raw-pixels"]
    assert schema_errors(report) == []
    md = (tmp_path / "o.failed" / "report.md").read_text()
    assert "Warning (raw-pixels)" in md and "briefly (not representative here)" in md
    plan = report["latency_plan"]
    assert plan["mode"] == "auto" and plan["brief"]  # the tensorrt placement on ONNX Runtime's CPU provider
    assert [(r["batch"], r["runs"]) for r in report["latency"]] == [(1, 3), (1, 3)]


def test_entropy_keeps_the_demo_within_a_point_of_fp32(tmp_path):
    code, text = run(
        ["build", "--calib-method", "entropy", "--out", str(tmp_path / "o"), "--val-size", "300", "--latency-batch", "1", "-q"]
    )
    assert code == 0, text
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["accuracy"]["top1_drop"] <= 1.0 and report["warnings"] == []
    ranges = json.loads((tmp_path / "o" / "ranges.json").read_text())["tensors"]
    assert ranges["input"]["summary"]["entropy_rule"] == "graph-input"
    assert ranges["input"]["amax"] == pytest.approx(ranges["input"]["summary"]["amax"]["max"])
