"""`rescompile validate BUILD` refuses preprocessing that differs from the build's recorded recipe."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from rescompile.cli import app
from tests.builds import LATENCY_RUNS

runner = CliRunner()


def test_validate_refuses_other_preprocessing(tmp_path: Path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    out = tmp_path / "b"
    result = runner.invoke(
        app,
        [
            "build",
            "resnet20",
            "--in-channels",
            "1",
            "--input-size",
            "16",
            "--num-classes",
            "4",
            "--preset",
            "fashion-mnist",
            "--calib",
            str(data),
            "--val",
            str(data),
            "--out",
            str(out),
            *LATENCY_RUNS,
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    bad = runner.invoke(
        app, ["validate", str(out), "--reference", str(out / "model.simplified.onnx"), "--preset", "grayscale", "--val", str(data)]
    )
    assert bad.exit_code == 2 and "preprocessing differs" in bad.stderr and "mean" in bad.stderr
    good = runner.invoke(
        app,
        [
            "validate",
            str(out),
            "--reference",
            str(out / "model.simplified.onnx"),
            "--preset",
            "fashion-mnist",
            "--val",
            str(data),
            *LATENCY_RUNS,
            "--out",
            str(tmp_path / "v"),
        ],
    )
    assert good.exit_code == 0, good.output + good.stderr
    assert (tmp_path / "v" / "report.json").is_file()
