"""``rescompile engine`` / ``targets`` / ``doctor`` and ``build --backend tensorrt`` on a machine without TensorRT."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from rescompile.calibrate.trt_cache import from_trt_cache
from rescompile.cli import app
from rescompile.commands.doctor import collect, cpu_flags
from rescompile.engine.targets import target_names

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
no_trt = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the no-TensorRT path is not taken")
runner = CliRunner()


def run(args: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, args)
    err = result.stderr if result.stderr_bytes is not None else ""
    assert "Traceback" not in result.output + err
    return result.exit_code, result.output, " ".join(err.split())  # messages wrap at the terminal width


@no_trt
def test_engine_without_tensorrt_exits_3_with_the_trtexec_command(tiny_int8_path: Path, tmp_path: Path) -> None:
    code, out, err = run(["engine", str(tiny_int8_path), "--target", "jetson-orin-nx", "--batch", "1,8,32", "--out", str(tmp_path)])
    assert code == 3
    assert "rescompile[tensorrt]" in err and "build on the device" in err
    cmd = next(line for line in out.splitlines() if line.startswith("/usr/src/tensorrt/bin/trtexec"))
    # --rest-precision fp16 (the default) builds from the typed copy model.engine.onnx
    assert f"--onnx={tmp_path / 'model.engine.onnx'}" in cmd and "--stronglyTyped" in cmd and "--memPoolSize=workspace:2048" in cmd
    assert "--minShapes=input:1x1x16x16" in cmd and "--optShapes=input:8x1x16x16" in cmd and "--int8" not in cmd
    assert not (tmp_path / "model.plan").exists()


@no_trt
def test_desktop_target_prints_commands_for_both_majors(tiny_int8_path: Path, tmp_path: Path) -> None:
    code, out, _ = run(["engine", str(tiny_int8_path), "--target", "rtx-ada", "--out", str(tmp_path)])
    lines = [line for line in out.splitlines() if line.startswith("trtexec ")]
    assert code == 3 and len(lines) == 2 and "--stronglyTyped" in lines[0] and "--stronglyTyped" not in lines[1]


@no_trt
def test_dla_on_jetpack_6_writes_plain_onnx_and_calibration_cache(tiny_int8_path: Path, tmp_path: Path) -> None:
    code, out, _ = run(["engine", str(tiny_int8_path), "--target", "jetson-agx-orin", "--dla-core", "1", "--out", str(tmp_path)])
    assert code == 3
    cmd = next(line for line in out.splitlines() if "trtexec" in line and "--onnx" in line)
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd and "--int8" in cmd
    assert f"--calib={tmp_path / 'model.dla.calib'}" in cmd
    ranges, version, algorithm = from_trt_cache((tmp_path / "model.dla.calib").read_text())
    plain = onnx.load(str(tmp_path / "model.dla.onnx"))
    assert (version, algorithm) == (100300, "EntropyCalibration2") and ranges
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in plain.graph.node}
    tensors = {o for n in plain.graph.node for o in n.output} | {i.name for i in plain.graph.input}
    assert set(ranges) <= tensors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target", "jetson-orin-nano", "--dla-core", "0"], "no DLA cores"),
        (["--target", "jetson-orin-nz"], "did you mean 'jetson-orin-nx'"),
        (["--target", "cpu"], "no TensorRT engine"),
        (["--target", "jetson-agx-orin", "--dla-core", "0", "--batch", "1,8"], "static shape"),
        (["--target", "jetson-orin-nx-8gb", "--workspace-mib", "9000"], "does not fit"),
        (["--batch", "0"], "between 1 and"),
    ],
)
def test_engine_usage_errors_exit_2(tiny_int8_path: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    code, _, err = run(["engine", str(tiny_int8_path), "--out", str(tmp_path), *args])
    assert code == 2 and needle in err


def test_engine_missing_onnx_exits_2(tmp_path: Path) -> None:
    code, _, err = run(["engine", str(tmp_path / "nope.onnx"), "--target", "rtx-ada"])
    assert code == 2 and "does not exist" in err


@no_trt
def test_build_with_tensorrt_backend_stops_before_any_work(tmp_path: Path) -> None:
    code, _, err = run(["build", "resnet20", "--backend", "tensorrt", "--target", "jetson-orin-nx", "--out", str(tmp_path / "o")])
    assert code == 3 and "rescompile[tensorrt]" in err and not (tmp_path / "o").exists()
    code, _, err = run(["build", "resnet20", "--backend", "tensorrt", "--target", "jetson-orin-nz"])
    assert code == 2 and "unknown target" in err


def test_targets_lists_every_profile() -> None:
    code, out, _ = run(["targets"])
    assert code == 0 and all(name in out for name in target_names())


def test_doctor_reports_and_never_fails() -> None:
    code, out, _ = run(["doctor"])
    assert code == 0 and "tensorrt" in out and "CUDA GPU" in out and "onnxruntime" in out
    rows = {item: (ok, detail) for item, ok, detail in collect()}
    assert rows["python"][0] and rows["onnx"] == (True, onnx.__version__)
    assert rows["tensorrt"][0] == HAS_TRT


def test_cpu_flags_from_cpuinfo() -> None:
    x86 = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t: sse\n"
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_vnni"}
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"
    assert "asimddp" in cpu_flags(arm)
    assert cpu_flags("") == set()


@no_trt
def test_tensorrt_runner_without_tensorrt_is_a_missing_dependency(tmp_path: Path) -> None:
    from rescompile.errors import MissingDependency
    from rescompile.runtime.tensorrt_runner import TensorRTRunner

    with pytest.raises(MissingDependency) as err:
        TensorRTRunner(tmp_path / "model.plan")
    assert err.value.exit_code == 3 and "rescompile[tensorrt]" in str(err.value)


def test_cuda_results_are_unpacked_or_raised() -> None:
    cudart = pytest.importorskip("cuda.bindings.runtime")
    from rescompile.runtime.cuda_libs import EngineRunError
    from rescompile.runtime.cuda_libs import cuda_ok as _ok

    assert _ok((cudart.cudaError_t.cudaSuccess, 7)) == 7 and _ok((cudart.cudaError_t.cudaSuccess,)) is None
    with pytest.raises(EngineRunError, match="CUDA error 1: invalid argument") as info:
        _ok((cudart.cudaError_t.cudaErrorInvalidValue,))
    assert info.value.exit_code == 4


def test_engine_command_judges_with_the_builds_engine_gates(capsys: pytest.CaptureFixture[str]) -> None:
    """`rescompile engine` fails on the same engine gates as build and deploy (validate.gates.engine_gates), and
    --allow-unfused lifts only the fusion gate."""
    from types import SimpleNamespace

    import typer

    from rescompile.commands.engine import _judge_engine
    from rescompile.engine.layerinfo import AddFusion, FusionReport

    fused = FusionReport(True, (AddFusion("b0/Add", "b0/conv2", "fused-int8", "L0", "CaskConvolution"),))
    unfused = FusionReport(True, (AddFusion("b0/Add", "b0/conv2", "unfused", "L1", "ElementWise"),))
    _judge_engine(SimpleNamespace(fusion=fused, dla=None), allow_unfused=False)  # passes: no exit
    assert "PASS engine_residual_fusion" in capsys.readouterr().out
    with pytest.raises(typer.Exit) as failed:
        _judge_engine(SimpleNamespace(fusion=unfused, dla=None), allow_unfused=False)
    assert failed.value.exit_code == 1
    assert "FAIL engine_residual_fusion: 1 residual Add(s) not fused into an INT8 TensorRT layer: b0/Add" in capsys.readouterr().out
    _judge_engine(SimpleNamespace(fusion=unfused, dla=None), allow_unfused=True)  # the one gate --allow-unfused lifts
