"""Run a TensorRT plan: name-based I/O, device buffers, pinned host memory, one non-default stream.

Before loading, the plan's sidecar (``model.plan.json``) is compared with this machine: a
plan built by another TensorRT version or on another GPU model is refused with a message
that says what differs, instead of failing deep inside TensorRT (or, worse, silently).
Buffers and the stream come from ``--cuda-lib`` (``rescompile.runtime.cuda_libs``): cuda-python
by default, as in NVIDIA's current samples, else pycuda, else torch with CUDA; host staging
memory is page-locked (copies from pageable numpy memory are synchronous staging copies and
distort latency). Latency runs may replay ``execute_async_v3`` from a CUDA graph, and
every TensorRT call that reports failure by returning False is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rescompile.engine.sidecar import compatibility_problems, read_sidecar, sidecar_path
from rescompile.errors import RescompileError, UsageError
from rescompile.runtime.cuda_libs import EngineRunError, graph_note, open_cuda_lib


def plan_dla_core(sidecar: dict[str, Any]) -> int | None:
    """The DLA core a plan was built for, from its sidecar's settings (None: a GPU plan)."""
    core = (sidecar.get("settings") or {}).get("dla_core")
    return None if core is None else int(core)


def _check(done: bool, what: str) -> None:
    """TensorRT reports these failures by returning False (and logging why)."""
    if not done:
        raise EngineRunError(f"TensorRT refused {what} (see its log above)")


class _DeviceBuffer:
    """A device allocation (from the chosen CUDA library) that grows on demand."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.buf: Any = None
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.buf = self.lib.alloc_device(nbytes)
            self.nbytes = nbytes
        return int(self.lib.device_ptr(self.buf))

    def free(self) -> None:
        if self.buf is not None:
            self.lib.free_device(self.buf)
        self.buf, self.nbytes = None, 0


class _PinnedBuffer:
    """Page-locked host memory (from the chosen CUDA library) that grows on demand, viewed as numpy arrays."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.buf: Any = None
        self.nbytes = 0

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        if nbytes > self.nbytes:
            self.free()
            self.buf = self.lib.alloc_host(nbytes)
            self.nbytes = nbytes
        raw = self.lib.host_array(self.buf, self.nbytes)
        return raw[:nbytes].view(dtype)[:count].reshape(shape)

    def free(self) -> None:
        if self.buf is not None:
            self.lib.free_host(self.buf)
        self.buf, self.nbytes = None, 0


class TensorRTRunner:
    """A TensorRT engine with one input and one output; ``infer(x)`` splits x into profile-sized chunks."""

    def __init__(
        self,
        plan: Path | str,
        name: str = "tensorrt-int8",
        check_compatibility: bool = True,
        device_index: int = 0,
        cuda_lib: str = "auto",
        dla_core: int | None = None,
    ) -> None:
        from rescompile.engine.device import load_tensorrt, require_gpu

        trt = load_tensorrt()
        plan = Path(plan)
        if not plan.is_file():
            raise UsageError(f"engine {plan} does not exist")
        device = require_gpu(device_index)
        self.engine: Any = None
        self.context: Any = None
        self._shape: tuple[int, ...] | None = None  # the input shape last set on the context
        self.cuda = open_cuda_lib(cuda_lib, device_index)  # makes the device current; exit 3 when no library
        try:
            self._open(trt, plan, device, check_compatibility, dla_core, name)
        except BaseException:
            self.close()  # nothing half-open: the library's context is released on a refusal too
            raise

    def _open(self, trt: Any, plan: Path, device: Any, check_compatibility: bool, dla_core: int | None, name: str) -> None:
        sidecar = read_sidecar(plan) if check_compatibility or sidecar_path(plan).is_file() else {}
        if dla_core is None:
            dla_core = plan_dla_core(sidecar)
        self.dla_core = dla_core
        if check_compatibility:
            problems = compatibility_problems(sidecar, str(trt.__version__), device)
            if problems:
                raise UsageError(
                    f"cannot run {plan} on this machine: " + "; ".join(problems),
                    hint="TensorRT engines are not portable: rebuild it here with `rescompile engine`",
                )
        self.name = name
        self._trt = trt
        from rescompile.engine.device import make_logger

        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if dla_core is not None:  # before deserializing: the DLA core the engine must run on (IRuntime::setDLACore)
            self._runtime.DLA_core = dla_core
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
        self._in = _DeviceBuffer(self.cuda)
        self._out = _DeviceBuffer(self.cuda)
        self._h_in = _PinnedBuffer(self.cuda)
        self._h_out = _PinnedBuffer(self.cuda)
        self.use_graphs = False  # set by enable_graph(); latency runs only
        self._graph: Any = None
        self._graph_key: tuple[Any, ...] | None = None
        self.graph_info: dict[str, Any] | None = None

    def _enqueue(self) -> None:
        _check(self.context.execute_async_v3(self.cuda.stream_handle()), "execute_async_v3")

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.dynamic and tuple(x.shape) != self._shape:  # set only on a change: replays and repeated batches skip it
            _check(self.context.set_input_shape(self.input, tuple(x.shape)), f"input shape {list(x.shape)}")
            self._shape = tuple(x.shape)
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        h_in = self._h_in.view(tuple(x.shape), self.input_dtype)
        np.copyto(h_in, x, casting="same_kind")
        h_out = self._h_out.view(out_shape, self.output_dtype)
        d_in, d_out = self._in.ensure(h_in.nbytes), self._out.ensure(h_out.nbytes)
        _check(self.context.set_tensor_address(self.input, d_in), f"the address of {self.input!r}")
        _check(self.context.set_tensor_address(self.output, d_out), f"the address of {self.output!r}")
        self.cuda.h2d(self._in.buf, self._h_in.buf, h_in.nbytes)
        key = (tuple(x.shape), d_in, d_out)
        if self._graph is not None and key == self._graph_key:
            self.cuda.launch(self._graph)
        else:
            self._enqueue()
        self.cuda.d2h(self._h_out.buf, self._out.buf, h_out.nbytes)
        self.cuda.sync()
        if self.use_graphs and self._graph is None and self.graph_info is None:
            self._capture(key)  # after one plain enqueue with these shapes and addresses (TensorRT's rule)
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

    def _capture(self, key: tuple[Any, ...]) -> None:
        error = None
        if self.cuda.has_graphs:
            try:
                self._graph = self.cuda.capture(self._enqueue)
                self._graph_key = key
            except Exception as exc:  # capture is an optimization: any failure falls back to plain enqueue
                self._graph, error = None, f"{type(exc).__name__}: {exc}"
        self.graph_info = graph_note(self.cuda.name, error)

    def enable_graph(self) -> None:
        """Latency runs: capture ``execute_async_v3`` into a CUDA graph at the next call, launch it after.

        The graph replays only for the shape and buffers it was captured with; other calls enqueue
        plainly. ``graph_info`` then records whether a graph is used and why not.
        """
        self.drop_graph()
        self.use_graphs = True

    def drop_graph(self) -> None:
        if self._graph is not None:
            self.cuda.free_graph(self._graph)
        self._graph, self._graph_key, self.graph_info, self.use_graphs = None, None, None, False

    def close(self) -> None:
        """Free buffers, then release TensorRT's context and engine, then the CUDA library (its context last).

        The engine and execution context were created in the library's CUDA context (pycuda pushes
        one): they must be gone before that context is popped, or TensorRT frees into a dead context.
        Safe to call twice.
        """
        if getattr(self, "cuda", None) is None:
            return
        try:
            if getattr(self, "_graph", None) is not None:
                self.drop_graph()
            for buf in ("_in", "_out", "_h_in", "_h_out"):
                if hasattr(self, buf):
                    getattr(self, buf).free()
        finally:
            self.context = None
            self.engine = None
            self._runtime = None
            cuda, self.cuda = self.cuda, None
            cuda.close()

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
