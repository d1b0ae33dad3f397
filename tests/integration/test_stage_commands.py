"""export -> simplify -> quantize as separate commands give the same INT8 model as a build."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from rescompile.cli import app
from tests.builds import LATENCY_RUNS

runner = CliRunner()


def ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def test_stage_commands_match_build(tmp_path: Path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    import torch

    from rescompile.models.resnet_cifar import cifar_resnet

    torch.save(cifar_resnet("resnet20", 4, 1).state_dict(), tmp_path / "w.pt")
    arch = ["--in-channels", "1", "--input-size", "16", "--num-classes", "4", "--weights", str(tmp_path / "w.pt")]
    ok(["build", "resnet20", *arch, "--calib", str(data), "--val", str(data), "--out", str(tmp_path / "b"), *LATENCY_RUNS, "-q"])
    ok(["export", "resnet20", *arch, "--out", str(tmp_path / "m.onnx")])
    assert (tmp_path / "m.onnx").read_bytes() == (tmp_path / "b" / "model.fp32.onnx").read_bytes()
    ok(["simplify", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "s.onnx")])
    assert (tmp_path / "s.onnx").read_bytes() == (tmp_path / "b" / "model.simplified.onnx").read_bytes()
    out = ok(
        [
            "quantize",
            str(tmp_path / "s.onnx"),
            "--ranges",
            str(tmp_path / "b" / "ranges.json"),
            "--out",
            str(tmp_path / "q.onnx"),
            "--plan-out",
            str(tmp_path / "plan.json"),
        ]
    )
    assert "9 residual Adds verified" in out
    assert (tmp_path / "q.onnx").read_bytes() == (tmp_path / "b" / "model.int8.onnx").read_bytes()


def test_quantize_rejects_bad_policy_and_missing_ranges(tmp_path: Path):
    result = runner.invoke(app, ["quantize", "nothing.onnx", "--ranges", "r.json"])
    assert result.exit_code == 2 and "not found" in result.stderr
