"""Bad input gets one clear line and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.models.resnet_cifar import cifar_resnet
from tests.builds import TINY_MODEL

runner = CliRunner()


def run(args: list[str]):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, args)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text
    return result.exit_code, text


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    p = tmp_path / "data.npz"
    np.savez_compressed(p, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    return p


def build_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return ["build", "resnet20", *TINY_MODEL, "--calib", str(data), "--val", str(data), "--out", str(tmp_path / "o"), *extra]


def test_missing_checkpoint(tmp_path, data):
    code, text = run(build_args(tmp_path, data, "--weights", str(tmp_path / "nope.pt")))
    assert code == 2 and "checkpoint not found" in text


def test_unreadable_checkpoint(tmp_path, data):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    code, text = run(build_args(tmp_path, data, "--weights", str(bad)))
    assert code == 2 and "bad.pt" in text


def test_checkpoint_for_another_architecture_lists_keys(tmp_path, data):
    ckpt = tmp_path / "r32.pt"
    torch.save(cifar_resnet("resnet32", 4, 1).state_dict(), ckpt)
    code, text = run(build_args(tmp_path, data, "--weights", str(ckpt)))
    assert code == 2 and "does not fit resnet20" in text and "unexpected keys" in text


def test_pickled_module_needs_trust(tmp_path, data):
    ckpt = tmp_path / "full.pt"
    torch.save({"model": cifar_resnet("resnet20", 4, 1), "epoch": 3}, ckpt)
    code, text = run(build_args(tmp_path, data, "--weights", str(ckpt)))
    # the message names what the file holds; the hint shows the safe way out, never the unsafe flag
    assert code == 2 and "pickled Python objects" in text and "ResNet" in text and "state_dict()" in text
    assert "--trust-checkpoint" not in text
    code, _ = run(build_args(tmp_path, data, "--weights", str(ckpt), "--trust-checkpoint"))
    assert code == 0


def test_prefixed_state_dict_loads(tmp_path, data):
    ckpt = tmp_path / "ddp.pt"
    sd = cifar_resnet("resnet20", 4, 1).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    code, text = run(build_args(tmp_path, data, "--weights", str(ckpt)))
    assert code == 0, text


def test_onnx_without_residual_add_builds_and_without_weights_is_refused(tmp_path, data):
    """A plain CNN (no residual Add, like DenseNet) builds; a graph with nothing to quantize exits 2."""
    import onnx

    from rescompile.export import export_onnx

    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    plain(torch.zeros(1, 1, 16, 16))
    pooled = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten())
    for name, module, want in (("plain", plain, 0), ("pooled", pooled, 2)):
        model, _ = export_onnx(module.eval(), (1, 16, 16))
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        code, text = run(["build", str(path), "--calib", str(data), "--val", str(data), "--out", str(tmp_path / name), "-q"])
        assert code == want, text
    assert "nothing for rescompile to quantize" in text


def test_empty_calibration_folder(tmp_path, data):
    (tmp_path / "empty").mkdir()
    empty = tmp_path / "empty"
    code, text = run(["build", "resnet20", *TINY_MODEL, "--calib", str(empty), "--val", str(data), "--out", str(tmp_path / "o")])
    assert code == 2 and "holds no samples" in text


def test_empty_calibration_array(tmp_path, data):
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 16, 16), np.uint8))
    code, text = run(["build", "resnet20", *TINY_MODEL, "--calib", str(empty), "--val", str(data), "--out", str(tmp_path / "o")])
    assert code == 2 and "no samples" in text


def test_missing_data_path(tmp_path, data):
    code, text = run(["build", "resnet20", *TINY_MODEL, "--calib", str(tmp_path / "nowhere"), "--val", str(data)])
    assert code == 2 and "not found" in text


def test_output_folder_is_a_file(tmp_path, data):
    target = tmp_path / "o"
    target.write_text("x")
    code, text = run(build_args(tmp_path, data))
    assert code == 2 and "is a file" in text
    assert target.read_text() == "x"


def test_data_shape_mismatch(tmp_path, data):
    code, text = run(
        [
            "build",
            "resnet20",
            "--in-channels",
            "3",
            "--input-size",
            "16",
            "--num-classes",
            "4",
            "-q",
            "--calib",
            str(data),
            "--val",
            str(data),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "model takes" in text


def test_unknown_model(tmp_path, data):
    code, text = run(["build", "vgg16", "--calib", str(data), "--val", str(data)])
    assert code == 2 and "unknown model" in text
