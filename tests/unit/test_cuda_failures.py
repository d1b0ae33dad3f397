"""The CUDA libraries on a real Jetson (issue 20 item 2; review D4, D5, D6, D11, D15), without a GPU.

Each fake here reproduces a *failure* of a CUDA library, never a working GPU or a TensorRT engine:
a cuda-python whose every call returns ``cudaErrorInsufficientDriver`` (a cuda-python 13 on a
JetPack 6 driver, NVIDIA/cutlass#2866), a machine without any Python CUDA binding, a pycuda whose
primary context is pushed and popped (what the runner must leave behind), and a CUDA-graph capture
that fails half-way (trtexec's handling in samples/common/sampleInference.cpp).
"""

from __future__ import annotations

import ast
import enum
import logging
import sys
import types
import weakref
from pathlib import Path
from typing import Any

import pytest

import rescompile.engine.device as device
import rescompile.runtime.tensorrt_runner as runner_mod
from rescompile.errors import MissingDependency
from rescompile.runtime import cuda_libs
from rescompile.runtime.cuda_libs import EngineRunError, resolve_cuda_lib
from rescompile.runtime.tensorrt_runner import TensorRTRunner


class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorStreamCaptureInvalidated = 901


class Mode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


class InsufficientDriver:
    """cuda-python 13 on a CUDA 12.6 driver: it imports, and every runtime call fails with error 35."""

    cudaError_t = Err
    cudaStreamCaptureMode = Mode

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> tuple[Any, ...]:
            self.calls.append(name)
            if name == "cudaGetErrorString":
                return (Err.cudaSuccess, b"CUDA driver version is insufficient for CUDA runtime version")
            if name in ("cudaSetDevice", "cudaGetLastError"):
                return (Err.cudaErrorInsufficientDriver,)
            return (Err.cudaErrorInsufficientDriver, None)

        return call


@pytest.fixture()
def bad_cuda_python(monkeypatch: pytest.MonkeyPatch) -> InsufficientDriver:
    fake = InsufficientDriver()
    monkeypatch.setattr(device, "cudart_module", lambda: fake)
    monkeypatch.setattr(device, "driver_version", lambda: 12060)  # JetPack 6.1/6.2: CUDA 12.6
    monkeypatch.setattr(cuda_libs, "_bindings_version", lambda: "13.0.1")
    return fake


# D5: auto takes a library only if it can talk to the driver.


def test_a_cuda_python_that_cannot_reach_the_driver_is_not_available(bad_cuda_python: InsufficientDriver) -> None:
    why = cuda_libs.cuda_python_unusable()
    assert why is not None and "cudaErrorInsufficientDriver" in why and "cuda-python 13.0.1 needs a CUDA 13 driver" in why
    assert bad_cuda_python.calls == ["cudaGetDeviceCount"]


def test_auto_skips_it_with_the_reason_and_takes_pycuda(bad_cuda_python: InsufficientDriver, caplog: pytest.LogCaptureFixture) -> None:
    probed = {"cuda-python": cuda_libs.cuda_python_unusable(), "pycuda": None, "torch": "torch.cuda.is_available() is False"}
    with caplog.at_level(logging.WARNING, logger="rescompile.runtime"):
        assert resolve_cuda_lib("auto", cuda_libs.available_libs(probed), probed) == "pycuda"
    assert "skipping cuda-python" in caplog.text and "cudaErrorInsufficientDriver" in caplog.text


def test_with_no_usable_library_the_error_names_each_reason(bad_cuda_python: InsufficientDriver) -> None:
    probed = {"cuda-python": cuda_libs.cuda_python_unusable(), "pycuda": "not installed", "torch": "torch.cuda.is_available() is False"}
    with pytest.raises(MissingDependency) as err:
        resolve_cuda_lib("auto", cuda_libs.available_libs(probed), probed)
    assert err.value.exit_code == 3 and "cudaErrorInsufficientDriver" in err.value.message and "pycuda (not installed)" in err.value.message


def test_an_explicit_cuda_python_that_cannot_run_says_why(bad_cuda_python: InsufficientDriver) -> None:
    probed = {"cuda-python": cuda_libs.cuda_python_unusable(), "pycuda": None, "torch": None}
    with pytest.raises(MissingDependency, match="cudaErrorInsufficientDriver"):
        resolve_cuda_lib("cuda-python", cuda_libs.available_libs(probed), probed)


def test_a_missing_probe_counts_as_unavailable() -> None:
    assert cuda_libs.available_libs({"pycuda": None}) == {"cuda-python": False, "pycuda": True, "torch": False}


# D4: a device without cuda-python (or with a broken one) still selects its device for the build.


def _no_cuda_python() -> Any:
    raise ImportError("No module named 'cuda'", name="cuda")


def test_device_0_builds_with_no_python_cuda_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cudart_module", _no_cuda_python)
    monkeypatch.setattr(device, "_libcudart", lambda: None)
    monkeypatch.setitem(sys.modules, "torch", None)  # a JetPack image: no torch
    assert device.select_device(0) == "default device 0"  # was MissingDependency (exit 3) before any build
    with pytest.raises(MissingDependency, match="cannot select CUDA device 1"):
        device.select_device(1)


def test_a_broken_cuda_python_falls_to_libcudart(monkeypatch: pytest.MonkeyPatch, bad_cuda_python: InsufficientDriver) -> None:
    calls: list[int] = []

    class LibCudart:
        def cudaSetDevice(self, index: int) -> int:  # noqa: N802 - the C function's name
            calls.append(index)
            return 0

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(device, "_libcudart", LibCudart)
    assert device.select_device(1) == "libcudart" and calls == [1]
    assert "cudaSetDevice" in bad_cuda_python.calls


# D6: pycuda uses the primary context; the runner releases its engine before the context is popped.


class FakeContext:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def push(self) -> None:
        self.log.append("push")

    def pop(self) -> None:
        self.log.append("pop")


@pytest.fixture()
def fake_pycuda(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def retain_primary_context(self) -> FakeContext:
            log.append(f"retain {self.index}")
            return FakeContext(log)

        def make_context(self) -> FakeContext:
            raise AssertionError("a second, non-primary context")

    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: log.append("init")  # type: ignore[attr-defined]
    driver.Device = Device  # type: ignore[attr-defined]
    driver.Stream = lambda: types.SimpleNamespace(handle=0)  # type: ignore[attr-defined]
    package = types.ModuleType("pycuda")
    package.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return log


def test_pycuda_pushes_the_primary_context_and_pops_it_once(fake_pycuda: list[str]) -> None:
    lib = cuda_libs.PyCuda(0)
    assert fake_pycuda == ["init", "retain 0", "push"]
    lib.close()
    lib.close()
    assert fake_pycuda == ["init", "retain 0", "push", "pop"] and lib.context is None


class _Held:
    """Stands for a TensorRT object the runner holds; records when the runner lets go of it."""


def test_runner_close_releases_context_and_engine_before_popping(fake_pycuda: list[str]) -> None:
    runner = object.__new__(TensorRTRunner)  # only the release order is under test: no engine is built
    runner.cuda = cuda_libs.PyCuda(0)
    runner.engine, runner.context, runner._runtime = _Held(), _Held(), _Held()
    weakref.finalize(runner.context, fake_pycuda.append, "context released")
    weakref.finalize(runner.engine, fake_pycuda.append, "engine released")
    runner.close()
    assert fake_pycuda[-3:] == ["context released", "engine released", "pop"]
    runner.close()  # twice is harmless
    assert fake_pycuda.count("pop") == 1


def test_deploy_and_validate_close_their_runner_in_a_finally() -> None:
    root = Path(runner_mod.__file__).parent.parent
    for rel in ("deploy/device.py", "pipeline/check.py"):
        tree = ast.parse((root / rel).read_text())
        finals = [n for n in ast.walk(tree) if isinstance(n, ast.Try) and n.finalbody]
        assert any("close" in ast.unparse(f) for t in finals for f in t.finalbody), rel


# D11: CUDA-graph capture in ThreadLocal mode, the error cleared and the partial graph destroyed.


class CaptureFailure:
    """cuda-python whose capture succeeds to begin, then fails where ``fail`` says."""

    cudaError_t = Err
    cudaStreamCaptureMode = Mode

    def __init__(self, fail: str) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def cudaStreamBeginCapture(self, stream: Any, mode: Mode) -> tuple[Err]:  # noqa: N802
        self.calls.append(("begin", mode))
        return (Err.cudaSuccess,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[Err, Any]:  # noqa: N802
        self.calls.append(("end", None))
        if self.fail == "end":
            return (Err.cudaErrorStreamCaptureInvalidated, None)
        return (Err.cudaSuccess, "partial-graph")

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[Err, Any]:  # noqa: N802
        self.calls.append(("instantiate", graph))
        return (Err.cudaErrorStreamCaptureInvalidated, None) if self.fail == "instantiate" else (Err.cudaSuccess, "exec")

    def cudaGraphDestroy(self, graph: Any) -> tuple[Err]:  # noqa: N802
        self.calls.append(("destroy", graph))
        return (Err.cudaSuccess,)

    def cudaGetLastError(self) -> tuple[Err]:  # noqa: N802
        self.calls.append(("clear", None))
        return (Err.cudaSuccess,)

    def cudaGetErrorString(self, err: Err) -> tuple[Err, bytes]:  # noqa: N802
        return (Err.cudaSuccess, b"operation failed due to a previous error during capture")


def _lib(fake: CaptureFailure) -> cuda_libs.CudaPython:
    lib = object.__new__(cuda_libs.CudaPython)
    lib.cudart, lib.stream = fake, 7
    return lib


def test_a_failed_enqueue_during_capture_ends_it_destroys_the_graph_and_raises_the_first_error() -> None:
    fake = CaptureFailure("enqueue")

    def enqueue() -> None:
        raise EngineRunError("TensorRT refused execute_async_v3")

    with pytest.raises(EngineRunError, match="execute_async_v3"):  # not masked by the capture's own error
        _lib(fake).capture(enqueue)
    assert fake.calls == [("begin", Mode.cudaStreamCaptureModeThreadLocal), ("end", None), ("destroy", "partial-graph"), ("clear", None)]


def test_a_failed_instantiate_destroys_the_graph_and_clears_the_error() -> None:
    fake = CaptureFailure("instantiate")
    with pytest.raises(EngineRunError):
        _lib(fake).capture(lambda: None)
    assert fake.calls[-2:] == [("destroy", "partial-graph"), ("clear", None)]


def test_a_failed_end_of_capture_clears_the_error() -> None:
    fake = CaptureFailure("end")
    with pytest.raises(EngineRunError):
        _lib(fake).capture(lambda: None)
    assert fake.calls[-1] == ("clear", None) and ("instantiate", None) not in fake.calls


def test_a_successful_capture_returns_exec_and_graph() -> None:
    fake = CaptureFailure("none")
    assert _lib(fake).capture(lambda: None) == ("exec", "partial-graph")
    assert ("destroy", "partial-graph") not in fake.calls


def test_torch_captures_in_thread_local_mode_too() -> None:
    src = ast.unparse(ast.parse(Path(cuda_libs.__file__).read_text()))
    assert "capture_error_mode='thread_local'" in src and "cudaStreamCaptureModeGlobal" not in src


# D15: set_input_shape only when the shape changes.


def test_set_input_shape_is_called_only_on_a_change_of_shape() -> None:
    tree = ast.parse(Path(runner_mod.__file__).read_text())
    run = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_run")
    (guard,) = [n for n in ast.walk(run) if isinstance(n, ast.If) and "set_input_shape" in ast.unparse(n)]
    assert "self._shape" in ast.unparse(guard.test) and "self._shape = " in ast.unparse(guard)
