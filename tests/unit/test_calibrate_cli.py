"""`rescompile calibrate`: outputs, offline method switches, exit 2 on bad data (builds reusing it: integration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from rescompile.calibrate.ranges import CalibrationResult
from rescompile.calibrate.trt_cache import from_trt_cache
from rescompile.cli import app

runner = CliRunner()


def run(args: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, args)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text, text
    return result.exit_code, text


@pytest.fixture()
def model_file(tmp_path: Path, tiny_onnx: onnx.ModelProto) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, path)
    return path


def test_calibrate_writes_ranges_stats_and_trt_cache_then_switches_method_offline(tmp_path: Path, model_file: Path, tiny_npz: Path) -> None:
    code, text = run(
        [
            "calibrate",
            str(model_file),
            "--calib",
            str(tiny_npz),
            "--preset",
            "grayscale",
            "--size",
            "16",
            "--method",
            "auto",
            "--out",
            str(tmp_path / "r.json"),
            "--stats",
            str(tmp_path / "s.npz"),
            "--trt-cache",
            str(tmp_path / "c.cache"),
            "-q",
        ]
    )
    assert code == 0, text
    assert "auto chose:" in text
    auto = CalibrationResult.from_json((tmp_path / "r.json").read_text())
    assert auto.method == "auto" and auto.samples == 40 and auto.preprocess["size"] == 16
    cache, version, algo = from_trt_cache((tmp_path / "c.cache").read_text())
    assert (version, algo) == (100300, "EntropyCalibration2") and set(cache) == set(auto.ranges)
    code, text = run(
        [
            "calibrate",
            str(model_file),
            "--from-stats",
            str(tmp_path / "s.npz"),
            "--method",
            "percentile",
            "--percentile",
            "99.0",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    assert code == 0 and "no model run" in text
    pct = CalibrationResult.from_json((tmp_path / "p.json").read_text())
    assert pct.key == auto.key and all(r.method == "percentile" for r in pct.ranges.values())
    assert all(pct.ranges[t].amax <= auto.summary[t]["amax"]["max"] for t in pct.ranges)
    code, text = run(["calibrate", str(model_file), "--from-trt-cache", str(tmp_path / "c.cache"), "--out", str(tmp_path / "t.json")])
    assert code == 0
    imported = CalibrationResult.from_json((tmp_path / "t.json").read_text())
    for t, r in imported.ranges.items():
        assert r.amax == pytest.approx(auto.ranges[t].amax, rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "kl"], "unknown calibration method 'kl'"),
        (["--method", "percentile", "--percentile", "120"], "--percentile must be in (0, 100]"),
        (["--mean", "0.1,0.2"], "--mean has 2 values but the input has 1 channels"),
        (["--size", "20"], "makes 1x20x20 inputs but the model takes 1x16x16"),
    ],
)
def test_calibrate_bad_options_exit_2(model_file: Path, tiny_npz: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    code, text = run(["calibrate", str(model_file), "--calib", str(tiny_npz), "--out", str(tmp_path / "r.json"), *extra])
    assert code == 2 and message in text.replace("\n", " ")


def test_calibrate_bad_data_exit_2(model_file: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, text = run(["calibrate", str(model_file), "--calib", str(tmp_path / "empty"), "--preset", "grayscale"])
    assert code == 2 and "holds no samples" in text
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, text = run(["calibrate", str(model_file), "--calib", str(folder), "--preset", "grayscale", "--size", "16"])
    assert code == 2 and "broken.png" in text
    np.save(tmp_path / "nan.npy", np.full((2, 1, 16, 16), np.nan, np.float32))
    code, text = run(["calibrate", str(model_file), "--calib", str(tmp_path / "nan.npy")])
    assert code == 2 and "sample 0 holds NaN or Inf" in text
    np.save(tmp_path / "huge.npy", np.full((2, 1, 16, 16), 3e38, np.float32))
    code, text = run(["calibrate", str(model_file), "--calib", str(tmp_path / "huge.npy")])
    assert code == 2 and "holds NaN or Inf during calibration" in text and "activation '" in text


def test_calibrate_shows_each_calibration_warning_once(tmp_path: Path, model_file: Path, tiny_npz: Path) -> None:
    args = [
        "calibrate",
        str(model_file),
        "--calib",
        str(tiny_npz),
        "--calib-size",
        "8",
        "--preset",
        "grayscale",
        "-o",
        str(tmp_path / "r.json"),
    ]
    for quiet in ([], ["-q"]):
        result = runner.invoke(app, [*args, *quiet])
        assert result.exit_code == 0, result.output
        assert result.output.count("8 calibration sample(s)") == 1 and "(tiny-calibration-set)" in result.output, result.output
