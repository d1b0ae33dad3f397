"""Device buffers, pinned host buffers and a stream for the TensorRT runner, from one of three libraries.

``cuda-python`` (NVIDIA's current samples; the default), ``pycuda`` (what many Jetson images
carry) or ``torch`` with CUDA. Each class below offers the same small protocol: allocate device
memory, allocate page-locked host memory (as a numpy uint8 array), copy host->device and
device->host asynchronously on its one stream, the stream as an int handle for TensorRT,
synchronize, free, and (where the library has one) capture a CUDA graph. Names used and their
sources: docs/tensorrt.md and ``rescompile.engine.api_names``.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rescompile.errors import MissingDependency, RescompileError, UsageError

LIBS = ("cuda-python", "pycuda", "torch")
CHOICES = ("auto", *LIBS)
INSTALL = {
    "cuda-python": "pip install 'rescompile[tensorrt]' (cuda-python matching the driver's CUDA major; JetPack 6: rescompile[jetpack6])",
    "pycuda": "pip install pycuda (builds against the CUDA toolkit)",
    "torch": "a CUDA build of torch (https://pytorch.org/get-started/locally/)",
}


log = logging.getLogger("rescompile.runtime")


class EngineRunError(RescompileError):
    """TensorRT or CUDA refused a call while running a plan (a bug or a broken install: exit 4)."""

    exit_code = 4


def cuda_ok(result: Any, cudart: Any = None) -> Any:
    """Unpack a cuda-python ``(err, value...)`` result; raise EngineRunError on an error code."""
    if cudart is None:
        from rescompile.engine.device import cudart_module

        cudart = cudart_module()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise EngineRunError(f"CUDA error {int(err)}: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def resolve_cuda_lib(choice: str, available: Mapping[str, bool], reasons: Mapping[str, str | None] | None = None) -> str:
    """The library to use for ``--cuda-lib choice`` given which libraries work here.

    ``auto`` takes the first available of cuda-python, pycuda, torch (with CUDA); a library that
    imports but cannot talk to the driver is not available (``reasons`` says why, and is logged).

    Raises:
        UsageError: ``choice`` is not one of ``CHOICES``.
        MissingDependency: the chosen library (or, for auto, every library) is unavailable.
    """
    check_choice(choice)
    why = dict(reasons or {})

    def reason(lib: str) -> str:
        return f" ({why[lib]})" if why.get(lib) else ""

    if choice != "auto":
        if not available.get(choice, False):
            raise MissingDependency(f"--cuda-lib {choice}: {choice} is not available{reason(choice)}", hint=INSTALL[choice])
        return choice
    for lib in LIBS:
        if available.get(lib, False):
            return lib
        if why.get(lib):
            log.warning("--cuda-lib auto: skipping %s: %s", lib, why[lib])
    raise MissingDependency(
        "no CUDA library for the TensorRT runner: cuda-python, pycuda and torch with CUDA all missing or unusable"
        + "".join(f"; {lib}{reason(lib)}" for lib in LIBS if why.get(lib)),
        hint="; ".join(f"{lib}: {how}" for lib, how in INSTALL.items()),
    )


def check_choice(choice: str) -> str:
    """``choice`` if it is a valid ``--cuda-lib`` value (checked before any work), else UsageError."""
    if choice not in CHOICES:
        raise UsageError(f"--cuda-lib {choice!r}: expected one of {', '.join(CHOICES)}")
    return choice


def _bindings_version() -> str:
    import importlib.metadata as md

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return ""


def cuda_python_unusable() -> str | None:
    """Why cuda-python cannot run here (None: it can). Importing is not enough: a cuda-python 13 on a
    JetPack 6 driver (CUDA 12.6) imports, then every call returns cudaErrorInsufficientDriver."""
    from rescompile.engine.device import cuda_python_problem, cudart_module, driver_version

    try:
        cudart = cudart_module()
    except ImportError:
        return "not installed"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # a broken install must not crash the choice
        return f"cudaGetDeviceCount raised {type(exc).__name__}: {exc}"
    if err != cudart.cudaError_t.cudaSuccess:
        mismatch = cuda_python_problem(_bindings_version(), driver_version())
        return f"cudaGetDeviceCount failed: {getattr(err, 'name', err)} ({int(err)})" + (f"; {mismatch}" if mismatch else "")
    if not count:
        return "no CUDA device"
    return cuda_python_problem(_bindings_version(), driver_version())


def _pycuda_unusable() -> str | None:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return "not installed"
    try:
        cuda.init()
        return None if cuda.Device.count() > 0 else "no CUDA device"
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError types
        return f"{type(exc).__name__}: {exc}"


def _torch_unusable() -> str | None:
    try:
        import torch
    except ImportError:
        return "not installed"
    return None if torch.cuda.is_available() else "torch.cuda.is_available() is False"


def probe_libs() -> dict[str, str | None]:
    """For each of ``LIBS``: None when it can run here, else why not."""
    return {"cuda-python": cuda_python_unusable(), "pycuda": _pycuda_unusable(), "torch": _torch_unusable()}


def available_libs(probed: Mapping[str, str | None] | None = None) -> dict[str, bool]:
    """Which of ``LIBS`` can run here (cuda-python only if it talks to the driver; torch only with CUDA)."""
    probed = probe_libs() if probed is None else probed
    return {lib: probed.get(lib, "not probed") is None for lib in LIBS}


def graph_note(lib: str, capture_error: str | None) -> dict[str, Any]:
    """What the latency result records about CUDA-graph use (pure: the fallback decision).

    pycuda's stable driver API has no graph capture, so it always enqueues plainly; elsewhere a
    failed capture (``capture_error``) falls back to plain enqueue and says why.
    """
    if lib == "pycuda":
        return {"used": False, "library": lib, "reason": "pycuda has no CUDA-graph API: plain enqueue"}
    if capture_error is not None:
        return {"used": False, "library": lib, "reason": f"capture failed, plain enqueue: {capture_error}"}
    return {"used": True, "library": lib, "reason": "execute_async_v3 captured once after warm-up, graph launched"}


class CudaPython:
    """cuda-python runtime API (``cuda.bindings.runtime``): every call returns ``(err, value...)``."""

    name = "cuda-python"
    has_graphs = True

    def __init__(self, device_index: int = 0) -> None:
        from rescompile.engine.device import cudart_module, select_device

        self.cudart = cudart = cudart_module()
        select_device(device_index)
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        return cuda_ok(result, self.cudart)

    def alloc_device(self, nbytes: int) -> Any:
        cudart = self.cudart
        return int(self._ok(cudart.cudaMalloc(nbytes)))

    def device_ptr(self, buf: Any) -> int:
        return int(buf)

    def alloc_host(self, nbytes: int) -> Any:
        cudart = self.cudart
        return int(self._ok(cudart.cudaMallocHost(nbytes)))

    def host_array(self, buf: Any, nbytes: int) -> np.ndarray:
        raw = (ctypes.c_byte * nbytes).from_address(int(buf))
        return np.frombuffer(memoryview(raw), dtype=np.uint8)

    def h2d(self, dev: Any, host: Any, nbytes: int) -> None:
        cudart = self.cudart
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(cudart.cudaMemcpyAsync(int(dev), int(host), nbytes, kind, self.stream))

    def d2h(self, host: Any, dev: Any, nbytes: int) -> None:
        cudart = self.cudart
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(cudart.cudaMemcpyAsync(int(host), int(dev), nbytes, kind, self.stream))

    def stream_handle(self) -> int:
        return int(self.stream)

    def sync(self) -> None:
        cudart = self.cudart
        self._ok(cudart.cudaStreamSynchronize(self.stream))

    def free_device(self, buf: Any) -> None:
        cudart = self.cudart
        self._ok(cudart.cudaFree(int(buf)))

    def free_host(self, buf: Any) -> None:
        cudart = self.cudart
        self._ok(cudart.cudaFreeHost(int(buf)))

    def capture(self, enqueue: Callable[[], None]) -> Any:
        """Capture ``enqueue`` into a graph, as trtexec does (samples/common/sampleDevice.h, sampleInference.cpp).

        ThreadLocal mode: an unsafe CUDA call from another thread (Ray workers, torch) does not
        invalidate this capture. On any failure the capture is ended, the partial graph destroyed
        and the error cleared (``cudaGetLastError``), then the *first* error is raised.
        """
        cudart = self.cudart
        self._ok(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            enqueue()
        except BaseException:
            result = cudart.cudaStreamEndCapture(self.stream)
            if result[0] == cudart.cudaError_t.cudaSuccess and result[1] is not None:
                cudart.cudaGraphDestroy(result[1])
            cudart.cudaGetLastError()
            raise
        try:
            graph = self._ok(cudart.cudaStreamEndCapture(self.stream))
        except EngineRunError:
            cudart.cudaGetLastError()
            raise
        try:
            return self._ok(cudart.cudaGraphInstantiate(graph, 0)), graph
        except EngineRunError:
            cudart.cudaGraphDestroy(graph)
            cudart.cudaGetLastError()
            raise

    def launch(self, graph: Any) -> None:
        cudart = self.cudart
        self._ok(cudart.cudaGraphLaunch(graph[0], self.stream))

    def free_graph(self, graph: Any) -> None:
        cudart = self.cudart
        self._ok(cudart.cudaGraphExecDestroy(graph[0]))
        self._ok(cudart.cudaGraphDestroy(graph[1]))

    def close(self) -> None:
        cudart = self.cudart
        if self.stream is not None:
            self._ok(cudart.cudaStreamDestroy(self.stream))
            self.stream = None


class PyCuda:
    """PyCUDA (``pycuda.driver``): the device's *primary* context, pushed here and popped on close.

    The primary context is the one the CUDA runtime (and so TensorRT) uses, as
    ``pycuda.autoprimaryctx`` does; a ``make_context()`` context would be a second one, detached
    (``cuCtxDetach``) by PyCUDA while TensorRT objects made in it are still alive (pycuda
    ``src/cpp/cuda.hpp``). The runner releases its engine before calling ``close``.
    """

    name = "pycuda"
    has_graphs = False

    def __init__(self, device_index: int = 0) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        self.context = cuda.Device(device_index).retain_primary_context()
        self.context.push()
        try:
            self.stream = cuda.Stream()
        except BaseException:
            self.close()
            raise

    def alloc_device(self, nbytes: int) -> Any:
        cuda = self.cuda
        return cuda.mem_alloc(nbytes)

    def device_ptr(self, buf: Any) -> int:
        return int(buf)

    def alloc_host(self, nbytes: int) -> Any:
        cuda = self.cuda
        return cuda.pagelocked_empty(nbytes, np.uint8)

    def host_array(self, buf: Any, nbytes: int) -> np.ndarray:
        return buf[:nbytes]  # type: ignore[no-any-return]

    def h2d(self, dev: Any, host: Any, nbytes: int) -> None:
        cuda = self.cuda
        cuda.memcpy_htod_async(dev, host[:nbytes], self.stream)

    def d2h(self, host: Any, dev: Any, nbytes: int) -> None:
        cuda = self.cuda
        cuda.memcpy_dtoh_async(host[:nbytes], dev, self.stream)

    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def sync(self) -> None:
        self.stream.synchronize()

    def free_device(self, buf: Any) -> None:
        buf.free()

    def free_host(self, buf: Any) -> None:
        pass  # pagelocked_empty memory is freed with the array

    def capture(self, enqueue: Callable[[], None]) -> Any:
        raise NotImplementedError("pycuda has no CUDA-graph API")

    def launch(self, graph: Any) -> None:
        raise NotImplementedError("pycuda has no CUDA-graph API")

    def free_graph(self, graph: Any) -> None:
        pass

    def close(self) -> None:
        """Drop the stream, then pop the primary context (once) and release our reference to it."""
        self.stream = None
        if self.context is not None:
            context, self.context = self.context, None
            context.pop()


class TorchCuda:
    """torch CUDA tensors: ``torch.empty(..., device=cuda)``, pinned host tensors, one ``torch.cuda.Stream``."""

    name = "torch"
    has_graphs = True

    def __init__(self, device_index: int = 0) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)
        self.stream: Any = torch.cuda.Stream(device=self.device)

    def alloc_device(self, nbytes: int) -> Any:
        torch = self.torch
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def device_ptr(self, buf: Any) -> int:
        return int(buf.data_ptr())

    def alloc_host(self, nbytes: int) -> Any:
        torch = self.torch
        return torch.empty(nbytes, dtype=torch.uint8).pin_memory()

    def host_array(self, buf: Any, nbytes: int) -> np.ndarray:
        return buf.numpy()[:nbytes]  # type: ignore[no-any-return]

    def h2d(self, dev: Any, host: Any, nbytes: int) -> None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            dev[:nbytes].copy_(host[:nbytes], non_blocking=True)

    def d2h(self, host: Any, dev: Any, nbytes: int) -> None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            host[:nbytes].copy_(dev[:nbytes], non_blocking=True)

    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def sync(self) -> None:
        self.stream.synchronize()

    def free_device(self, buf: Any) -> None:
        pass  # freed when the tensor is dropped

    def free_host(self, buf: Any) -> None:
        pass

    def capture(self, enqueue: Callable[[], None]) -> Any:
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):  # as trtexec's ThreadLocal
            enqueue()
        return graph

    def launch(self, graph: Any) -> None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            graph.replay()

    def free_graph(self, graph: Any) -> None:
        pass

    def close(self) -> None:
        self.stream = None


def open_cuda_lib(choice: str = "auto", device_index: int = 0) -> Any:
    """The CUDA library object for ``--cuda-lib choice`` on device ``device_index``."""
    probed = probe_libs()
    lib = resolve_cuda_lib(choice, available_libs(probed), probed)
    cls = {"cuda-python": CudaPython, "pycuda": PyCuda, "torch": TorchCuda}[lib]
    return cls(device_index)
