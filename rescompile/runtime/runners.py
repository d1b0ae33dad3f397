"""Runners for the FP32 reference and the candidates: PyTorch and ONNX Runtime (CPU).

Every runner has a ``name`` (``<runtime>-<precision>``) and ``infer(x) -> float32 logits``;
inputs are float32 N,C,H,W and are cast to what the model takes (an FP16 ONNX model gets
float16), so every runner sees the same preprocessed inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

_DEFAULT_THREADS: list[int] = []


def default_threads() -> int:
    """The intra-op thread count a runner uses when none is given.

    PyTorch's default (its physical cores) when PyTorch is already loaded, else the CPUs this process may
    run on (the device side runs without PyTorch, and must not import it just to count). Read once per
    process, before any runner changes it, and given explicitly to both PyTorch and ONNX Runtime, so a run's
    results never depend on which library picked the count (a float reduction's order follows the thread
    count: resnet50's logits differ by ~3e-5 between 1 and 2 threads). Ray shards get the driver's count
    (rescompile.validate.on_ray), which makes them bit-identical to one process.
    """
    if not _DEFAULT_THREADS:
        import os
        import sys

        torch = sys.modules.get("torch")
        if torch is not None:
            count = torch.get_num_threads()
        else:
            count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _DEFAULT_THREADS.append(max(1, count))
    return _DEFAULT_THREADS[0]


_QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")


class Runner(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """A PyTorch module in eval mode, inference only."""

    def __init__(self, module: Any, name: str = "pytorch-fp32", threads: int | None = None) -> None:
        import torch

        self.threads = threads or default_threads()
        torch.set_num_threads(self.threads)
        self.module = module.eval()
        self.name = name

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


def onnx_precision(model: onnx.ModelProto) -> str:
    """``int8`` for a quantized graph, ``fp16`` for a half-precision one, else ``fp32``."""
    if any(n.op_type in _QUANT_OPS for n in model.graph.node):
        return "int8"
    halves = sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    inputs = [i for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16]
    return "fp16" if inputs or halves > len(model.graph.initializer) // 2 else "fp32"


def signed_activation_quantizers(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes of ``model`` whose output is INT8 (signed), i.e. symmetric INT8 activations."""
    zp_types = {t.name: t.data_type for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        out_type = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), None)
        if out_type is None and len(node.input) > 2 and node.input[2]:
            out_type = zp_types.get(node.input[2])
        count += out_type == onnx.TensorProto.INT8
    return count


def fuses_qdq(model: onnx.ModelProto) -> bool:
    """Whether ONNX Runtime's CPU provider should fuse ``model``'s Q/DQ groups into integer kernels: not for signed INT8
    activations (TensorRT's scheme), which it would run as DequantizeLinear + FP32 ops anyway.

    Such a graph runs literally, Q/DQ by Q/DQ (``session.disable_quant_qdq``): the same function as ONNX Runtime's
    default, whose FP32 sums run in another order (a rounding boundary of a QuantizeLinear can then flip, so a few
    predictions differ), ~20% faster because the weights' DequantizeLinear is folded once and the FP32 convolutions
    get ONNX Runtime's blocked layout (docs/build.md, "The FP32 reference and the candidate").
    """
    return not signed_activation_quantizers(model)


class OnnxRuntimeRunner:
    """An ONNX model on ONNX Runtime's CPU provider with full graph optimization.

    ``fuse_qdq``: let ONNX Runtime fuse Q/DQ groups into its integer kernels (None: :func:`fuses_qdq` of a
    model given as a ModelProto; a model given as bytes or a path is fused).
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | bytes,
        name: str = "onnxruntime",
        threads: int | None = None,
        optimized_path: str | None = None,
        fuse_qdq: bool | None = None,
    ) -> None:
        from rescompile.runtime.sessions import ort_session

        self.threads = threads or default_threads()
        self.fuse_qdq = fuse_qdq if fuse_qdq is not None else isinstance(model, str | bytes) or fuses_qdq(model)
        data = model if isinstance(model, str | bytes) else model.SerializeToString()
        self.model_data = data  # rebuilds this runner elsewhere (a Ray task: rescompile.validate.on_ray)
        self.session = ort_session(
            data, optimize=True, threads=self.threads, inter_op_threads=1, optimized_path=optimized_path, fuse_qdq=self.fuse_qdq
        )
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self.name = name

    def infer(self, x: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(x, dtype=self.input_dtype)
        return np.asarray(self.session.run(None, {self.input_name: feed})[0], dtype=np.float32)


TENSORRT_SUFFIXES = (".plan", ".engine", ".trt")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read an ONNX file or raise UsageError naming the problem (no PyTorch import on this path)."""
    from rescompile.readers import read_onnx

    return read_onnx(Path(path))


def open_runner(
    path: Path, *, threads: int | None = None, name: str | None = None, cuda_lib: str = "auto", model: onnx.ModelProto | None = None
) -> Runner:
    """A runner for a model file: ``.onnx`` on ONNX Runtime, a TensorRT plan where TensorRT exists.

    A plan's buffers come from ``cuda_lib`` (auto, cuda-python, pycuda, torch: ``rescompile.runtime.cuda_libs``).
    ``model``: the ``.onnx`` file's model, already read by the caller (it is not read again).

    Raises:
        UsageError: the file is missing, unreadable or of an unknown kind.
        MissingDependency: a TensorRT plan on a machine without TensorRT (exit code 3).
    """
    from rescompile.errors import UsageError, require

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TENSORRT_SUFFIXES:
        require("tensorrt", extra="tensorrt")
        from rescompile.runtime import tensorrt_runner  # written beside this module; imports tensorrt

        return tensorrt_runner.TensorRTRunner(path, cuda_lib=cuda_lib)  # type: ignore[no-any-return]
    if suffix != ".onnx":
        raise UsageError(f"{path}: expected an .onnx model or a TensorRT plan ({', '.join(TENSORRT_SUFFIXES)})")
    if model is None:
        model = load_onnx(path)
    try:
        return OnnxRuntimeRunner(model, name or f"onnxruntime-{onnx_precision(model)}", threads)
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise UsageError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
