"""Run a TensorRT plan: name-based I/O, cuda-python buffers, pinned host memory, one non-default stream.

Before loading, the plan's sidecar (``model.plan.json``) is compared with this machine: a
plan built by another TensorRT version or on another GPU model is refused with a message
that says what differs, instead of failing deep inside TensorRT (or, worse, silently).
Buffers come from cuda-python (``cuda.bindings.runtime``), as in NVIDIA's current samples:
device memory from ``cudaMalloc``, host staging memory from ``cudaMallocHost`` (page-locked;
copies from pageable numpy memory are synchronous staging copies and distort latency), and
every TensorRT call that reports failure by returning False is checked.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.engine.device import cudart_module, select_device
from rescompile.engine.sidecar import compatibility_problems, read_sidecar
from rescompile.errors import MissingDependency, RescompileError, UsageError


class EngineRunError(RescompileError):
    """TensorRT or CUDA refused a call while running a plan (a bug or a broken install: exit 4)."""

    exit_code = 4


def _ok(result: Any) -> Any:
    """Unpack a cuda-python ``(err, value...)`` result; raise on an error code."""
    cudart = cudart_module()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise EngineRunError(f"CUDA error {int(err)}: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _check(done: bool, what: str) -> None:
    """TensorRT reports these failures by returning False (and logging why)."""
    if not done:
        raise EngineRunError(f"TensorRT refused {what} (see its log above)")


class _DeviceBuffer:
    """A device allocation that grows on demand."""

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        cudart = cudart_module()
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(_ok(cudart.cudaMalloc(nbytes)))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        cudart = cudart_module()
        if self.ptr:
            _ok(cudart.cudaFree(self.ptr))
        self.ptr, self.nbytes = 0, 0


class _PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``) that grows on demand, viewed as numpy arrays."""

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > self.nbytes:
            self.free()
            cudart = cudart_module()
            self.ptr = int(_ok(cudart.cudaMallocHost(nbytes)))
            self.nbytes = nbytes
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        return np.frombuffer(memoryview(raw), dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def free(self) -> None:
        cudart = cudart_module()
        if self.ptr:
            _ok(cudart.cudaFreeHost(self.ptr))
        self.ptr, self.nbytes = 0, 0


class TensorRTRunner:
    """A TensorRT engine with one input and one output; ``infer(x)`` splits x into profile-sized chunks."""

    def __init__(self, plan: Path | str, name: str = "tensorrt-int8", check_compatibility: bool = True,
                 device_index: int = 0) -> None:  # fmt: skip
        from rescompile.engine.tensorrt import load_tensorrt, make_logger, require_gpu

        trt = load_tensorrt()
        try:
            cudart = cudart_module()
        except ImportError:
            raise MissingDependency("cuda-python is not installed", hint="pip install 'rescompile[tensorrt]'") from None

        plan = Path(plan)
        if not plan.is_file():
            raise UsageError(f"engine {plan} does not exist")
        device = require_gpu(device_index)
        select_device(device_index)
        if check_compatibility:
            problems = compatibility_problems(read_sidecar(plan), str(trt.__version__), device)
            if problems:
                raise UsageError(f"cannot run {plan} on this machine: " + "; ".join(problems),
                                 hint="TensorRT engines are not portable: rebuild it here with `rescompile engine`")  # fmt: skip
        self.name = name
        self._trt = trt
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RescompileError(f"TensorRT could not deserialize {plan}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineRunError(f"TensorRT could not create an execution context for {plan}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UsageError(f"expected one input and one output, the engine has {inputs} and {outputs}")
        self.input, self.output = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        shape = tuple(self.engine.get_tensor_shape(self.input))
        if shape[0] < 0:
            _, _, max_shape = self.engine.get_tensor_profile_shape(self.input, 0)
            self.max_batch = int(max_shape[0])
            self.min_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[0][0])
        else:
            self.max_batch = self.min_batch = int(shape[0])
        self.dynamic = shape[0] < 0
        self._stream = _ok(cudart.cudaStreamCreate())
        self._in = _DeviceBuffer()
        self._out = _DeviceBuffer()
        self._h_in = _PinnedBuffer()
        self._h_out = _PinnedBuffer()

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart = cudart_module()

        if self.dynamic:
            _check(self.context.set_input_shape(self.input, tuple(x.shape)), f"input shape {list(x.shape)}")
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        h_in = self._h_in.view(tuple(x.shape), self.input_dtype)
        np.copyto(h_in, x, casting="same_kind")
        h_out = self._h_out.view(out_shape, self.output_dtype)
        d_in, d_out = self._in.ensure(h_in.nbytes), self._out.ensure(h_out.nbytes)
        _check(self.context.set_tensor_address(self.input, d_in), f"the address of {self.input!r}")
        _check(self.context.set_tensor_address(self.output, d_out), f"the address of {self.output!r}")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ok(cudart.cudaMemcpyAsync(d_in, self._h_in.ptr, h_in.nbytes, h2d, self._stream))
        _check(self.context.execute_async_v3(int(self._stream)), "execute_async_v3")
        _ok(cudart.cudaMemcpyAsync(self._h_out.ptr, d_out, h_out.nbytes, d2h, self._stream))
        _ok(cudart.cudaStreamSynchronize(self._stream))
        return h_out.copy()  # the pinned buffer is reused by the next call

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch ``x`` (N, C, H, W).

        Batches beyond the profile's maximum run in chunks; a chunk below the engine's minimum
        (or, for a fixed-batch engine, any partial chunk) is zero-padded and the padding dropped.
        """
        least = self.min_batch if self.dynamic else self.max_batch
        parts = []
        for i in range(0, len(x), self.max_batch):
            chunk = x[i : i + self.max_batch]
            n = len(chunk)
            if n < least:
                chunk = np.concatenate([chunk, np.zeros((least - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(chunk)[:n])
        return np.concatenate(parts)

    def close(self) -> None:
        cudart = cudart_module()

        self._in.free()
        self._out.free()
        self._h_in.free()
        self._h_out.free()
        if self._stream is not None:
            _ok(cudart.cudaStreamDestroy(self._stream))
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
