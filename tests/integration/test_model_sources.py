"""Each model source builds end to end on small inputs: CIFAR family, torchvision, TorchScript, ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.models import load_model
from rescompile.models.resnet_cifar import DEPTHS, cifar_resnet
from tests.builds import LATENCY_RUNS

runner = CliRunner()
FAST = [*LATENCY_RUNS, "-q"]


def npz(tmp_path: Path, channels: int, size: int, classes: int, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    p = tmp_path / f"d{channels}x{size}.npz"
    shape = (n, size, size) if channels == 1 else (n, channels, size, size)
    np.savez(p, images=rng.integers(0, 256, shape, dtype=np.uint8), labels=rng.integers(0, classes, n))
    return p


def invoke(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads((Path(args[args.index("--out") + 1]) / "report.json").read_text())


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_cifar_family_depths(name):
    m = load_model(name, num_classes=10, in_channels=3)
    n_blocks = (DEPTHS[name] - 2) // 6 * 3
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.module.modules()) == 2 * n_blocks + 1 + 2  # + 2 projections
    assert m.input_shape == (3, 32, 32)


def test_torchvision_with_checkpoint(tmp_path):
    from rescompile.runtime.runners import OnnxRuntimeRunner
    from rescompile.validate.reference import load_reference

    module = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    ckpt = tmp_path / "r18.pth"
    torch.save({"model": module.state_dict()}, ckpt)
    data = npz(tmp_path, 3, 64, 5)
    out, ref = tmp_path / "o", tmp_path / "ref.npz"
    args = ["--num-classes", "5", "--input-size", "64", "--calib", str(data), "--val", str(data), "--save-reference", str(ref)]
    report = invoke(["build", "torchvision:resnet18", "--weights", str(ckpt), *args, "--out", str(out), *FAST])
    assert report["stages"]["residual_adds"] == 8 and report["stages"]["verify"]["ok"]
    # The FP32 reference of a PyTorch source is its simplified ONNX model on ONNX Runtime (docs/build.md): the saved
    # logits are that session's, bit for bit, and the PyTorch module's within the export's parity tolerance.
    assert report["reference"] == "onnxruntime-fp32"
    saved = load_reference(ref)
    assert saved.inputs is not None and len(saved.inputs) == 16
    fp32 = OnnxRuntimeRunner(str(out / "model.simplified.onnx"), threads=report["settings"]["threads"])
    assert np.array_equal(saved.logits, fp32.infer(saved.inputs))
    with torch.inference_mode():
        torch_logits = module(torch.from_numpy(saved.inputs)).numpy()
    assert np.allclose(saved.logits, torch_logits, rtol=1e-4, atol=1e-4 * float(np.abs(torch_logits).max()))
    assert not np.array_equal(saved.logits, torch_logits)  # two runtimes: the test tells them apart


def test_torchscript_source(tmp_path):
    scripted = torch.jit.script(cifar_resnet("resnet20", 4, 1).eval())
    path = tmp_path / "r20.ts"
    scripted.save(str(path))
    data = npz(tmp_path, 1, 16, 4)
    report = invoke(
        [
            "build",
            str(path),
            "--in-channels",
            "1",
            "--input-size",
            "16",
            "--num-classes",
            "4",
            "--calib",
            str(data),
            "--val",
            str(data),
            "--out",
            str(tmp_path / "o"),
            *FAST,
        ]
    )
    assert report["stages"]["residual_adds"] == 9


def test_onnx_source_skips_export_and_is_read_once(tmp_path, monkeypatch):
    data = npz(tmp_path, 1, 16, 4)
    first = tmp_path / "first"
    invoke(
        [
            "build",
            "resnet20",
            "--in-channels",
            "1",
            "--input-size",
            "16",
            "--num-classes",
            "4",
            "--calib",
            str(data),
            "--val",
            str(data),
            "--out",
            str(first),
            *FAST,
        ]
    )
    import onnx

    reads: list[str] = []
    load = onnx.load

    def counted(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counted)
    report = invoke(
        ["build", str(first / "model.fp32.onnx"), "--calib", str(data), "--val", str(data), "--out", str(tmp_path / "o"), *FAST]
    )
    monkeypatch.undo()
    assert reads.count(str(first / "model.fp32.onnx")) == 1, reads  # described and exported from one read
    assert report["reference"] == "onnxruntime-fp32"
    assert report["stages"]["export_max_abs_error"] is None
    assert report["agreement"]["cosine_mean"] > 0.99


@pytest.fixture(scope="module")
def opset11_build(tmp_path_factory) -> Path:
    """A build of the tiny ResNet exported as a newcomer would: opset 11, no dynamic_axes (batch fixed to 1)."""
    from tests.models import TINY_SHAPE, tiny_resnet

    tmp = tmp_path_factory.mktemp("op11")
    model = tmp / "tiny_op11.onnx"
    torch.onnx.export(tiny_resnet(), torch.zeros(1, *TINY_SHAPE), str(model), opset_version=11, dynamo=False)
    data = npz(tmp, 1, 16, 4)
    invoke(["build", str(model), "--calib", str(data), "--val", str(data), "--out", str(tmp / "o"), *FAST])
    return tmp / "o"


def test_onnx_below_opset_13_with_a_fixed_batch_is_converted_and_builds(opset11_build):
    report = json.loads((opset11_build / "report.json").read_text())
    conversion = report["stages"]["opset_conversion"]
    assert (conversion["from"], conversion["to"]) == (11, 13) and conversion["max_abs_error"] < 1e-4
    assert report["stages"]["batch_made_dynamic"]["fixed"] == 1 and report["stages"]["batch_made_dynamic"]["max_abs_error"] < 1e-4
    assert report["stages"]["verify"]["ok"] and report["agreement"]["cosine_mean"] > 0.99


def test_an_int8_model_from_a_build_is_refused_by_build_before_any_work(opset11_build, tmp_path):
    data = npz(tmp_path, 1, 16, 4)
    out = tmp_path / "o"
    int8 = opset11_build / "model.int8.onnx"
    result = runner.invoke(app, ["build", str(int8), "--calib", str(data), "--val", str(data), "--out", str(out), *FAST])
    assert result.exit_code == 2, result.output + result.stderr
    assert "already quantized" in result.stderr and "Traceback" not in result.output + result.stderr
    for command in ("validate", "inspect", "engine"):
        assert f"rescompile {command}" in " ".join(result.stderr.split())
    assert not out.exists()
