"""`rescompile build --calib-method`: calibration reused by key, never a stale one, and the log says which."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from typer.testing import CliRunner

from rescompile.cli import app
from tests.builds import LATENCY_RUNS


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text, text
    return result.exit_code, text


def test_build_reuses_calibration_by_key_and_never_a_stale_one(tmp_path: Path, tiny_onnx: onnx.ModelProto, tiny_npz: Path) -> None:
    model_file = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, model_file)
    out = tmp_path / "b"
    base = [
        "build",
        str(model_file),
        "--calib",
        str(tiny_npz),
        "--val",
        str(tiny_npz),
        "--preset",
        "grayscale",
        "--out",
        str(out),
        *LATENCY_RUNS,
        "--latency-batch",
        "1",
    ]
    code, text = run([*base, "--calib-method", "entropy"])
    assert code == 0, text
    assert "reusing" not in text
    first = (out / "ranges.json").read_bytes()
    code, text = run([*base, "--calib-method", "entropy"])
    assert code == 0 and "reusing calibration ranges" in text
    assert (out / "ranges.json").read_bytes() == first
    code, text = run([*base, "--calib-method", "mse"])
    assert code == 0 and "reusing calibration statistics" in text
    report = json.loads((out / "report.json").read_text())["calibration"]
    assert report["reused"] == "statistics" and report["methods_chosen"] == {"mse": len(json.loads(first)["tensors"])}
    code, text = run([*base, "--calib-method", "mse", "--mean", "0.4"])  # other preprocessing: stale
    assert code == 0 and "reusing" not in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocess"]["mean"] == [0.4] and manifest["preprocess"]["name"] == "custom"
    assert "calib_stats.npz" in manifest["artifacts"]
