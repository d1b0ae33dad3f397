"""The default floor on a real build: broken INT8 (activations clipped at their median) fails it with a hint, exit 1;
--no-default-gates builds the same model and exits 0. --gate-mode confident fails a straddling gate and says how many
samples would settle it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rescompile.buildfolder import REPORT_JSON
from rescompile.cli import app

runner = CliRunner()
SMALL = ["-q", "--val-size", "200", "--latency-runs", "3", "--latency-batch", "1"]
BROKEN = ["--calib-method", "percentile", "--percentile", "50"]  # half of every activation clipped: broken INT8


def test_broken_int8_fails_the_default_floor_and_no_default_gates_turns_it_off(tmp_path: Path):
    out = tmp_path / "broken"
    result = runner.invoke(app, ["build", "--out", str(out), *SMALL, *BROKEN])
    assert result.exit_code == 1, result.output
    assert "FAIL floor_cosine" in result.output and "--auto-fallback" in result.output and "--equalize" in result.output
    report = json.loads((tmp_path / "broken.failed" / REPORT_JSON).read_text())
    floor = {g["name"]: g for g in report["gates"]}
    assert set(floor) == {"floor_cosine", "floor_margin_agreement", "floor_top1_drop"}
    assert all(g["mode"] == "floor" and g["side"] == "unsafe" and not g["passed"] for g in floor.values())
    assert floor["floor_top1_drop"]["lo"] > 3.0  # the whole interval above the floor: evidence, not a straddle

    result = runner.invoke(app, ["build", "--out", str(out), *SMALL, *BROKEN, "--no-default-gates"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / REPORT_JSON).read_text())["gates"] == []


def test_confident_mode_fails_a_straddling_gate_with_samples_to_settle(tmp_path: Path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["build", "--out", str(out), *SMALL, "--gate-mode", "confident", "--max-top1-drop", "0.1"])
    assert result.exit_code == 1, result.output
    assert "straddles: ~" in result.output and "samples would settle it" in result.output
    (gate,) = json.loads((tmp_path / "demo.failed" / REPORT_JSON).read_text())["gates"]
    assert gate["mode"] == "confident" and gate["side"] == "straddles" and gate["samples_to_settle"] > 200
    assert gate["lo"] <= 0.1 <= gate["hi"]


def test_unknown_gate_mode_and_class_gate_without_labels_are_refused_before_any_work(tmp_path: Path):
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "x"), *SMALL, "--gate-mode", "sure"])
    assert result.exit_code == 2 and "unknown gate mode" in result.output
    calib = tmp_path / "calib.npy"
    import numpy as np

    np.save(calib, np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    result = runner.invoke(
        app, ["build", "--out", str(tmp_path / "y"), "--calib", str(calib), "--val", str(calib), *SMALL, "--max-class-drop", "3"]
    )
    assert result.exit_code == 2 and "--max-class-drop needs labelled validation data" in result.output, result.output
