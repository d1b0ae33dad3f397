"""The one place rescompile makes ONNX Runtime sessions: CPU provider, warnings muted, the caller's settings.

Every session of the package comes from :func:`ort_session`; what differs between callers is
spelled out in its arguments:

- the runners (``runners.OnnxRuntimeRunner``): full graph optimization, ``threads`` intra-op
  threads and one inter-op thread (sharded Ray validation matches one process bit for bit); a graph
  with signed INT8 activations (TensorRT's scheme) runs its Q/DQ nodes literally (``fuse_qdq=False``);
- parity checks (``export.run_onnx``: export, simplify, opset conversion): no graph optimization,
  ONNX Runtime's own thread count;
- calibration (``calibrate.collect``): idle threads sleep instead of spinning, so the statistics
  thread gets their cycles;
- layer-wise error (``validate.layerwise``): no graph optimization, so every probed tensor exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

PROVIDERS = ["CPUExecutionProvider"]
LOG_ERRORS_ONLY = 3  # ONNX Runtime's severity: 0 verbose .. 3 error (its warnings about unused initializers are noise here)


def ort_session(
    model: onnx.ModelProto | bytes | str,
    *,
    optimize: bool = True,
    threads: int | None = None,
    inter_op_threads: int | None = None,
    spinning: bool = True,
    optimized_path: str | None = None,
    fuse_qdq: bool = True,
) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider.

    Args:
        model: a model, its serialized bytes, or a file path.
        optimize: ONNX Runtime's graph optimizations all on (its default) or all off.
        threads: intra-op threads; None or 0 leaves ONNX Runtime's default (one per core).
        inter_op_threads: inter-op threads; None leaves ONNX Runtime's default.
        spinning: False makes idle intra-op threads sleep instead of spin-waiting.
        optimized_path: where ONNX Runtime writes the graph it optimized (for inspection).
        fuse_qdq: False runs Q/DQ nodes literally (``session.disable_quant_qdq``: no integer-kernel fusion; constant
            folding then folds the weights' DequantizeLinear).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = LOG_ERRORS_ONLY
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if inter_op_threads is not None:
        opts.inter_op_num_threads = inter_op_threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not fuse_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    data = model if isinstance(model, str | bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=PROVIDERS)
