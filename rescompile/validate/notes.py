"""Notes a report carries about what its numbers mean, read from the candidate graph and its runner."""

from __future__ import annotations

import onnx

from rescompile.runtime.runners import signed_activation_quantizers

TENSORRT_GRAPH_ON_CPU = (
    "The candidate quantizes activations to signed INT8, TensorRT's scheme (the tensorrt placement also "
    "leaves Conv outputs unquantized so that TensorRT fuses Conv+Add+ReLU). ONNX Runtime's CPU kernels are "
    "fast only with UINT8 activations in fused DequantizeLinear -> op -> QuantizeLinear groups, so this graph "
    "runs there largely as DequantizeLinear + FP32 ops: its latency here is not a TensorRT engine's and is "
    "usually slower than FP32, so by default it is timed only briefly (the smallest batch size, 3 runs). The "
    "accuracy numbers are what this run measures. For an INT8 model that is fast on this CPU, build with "
    "--policy onnxruntime."
)


def latency_notes(candidate: onnx.ModelProto | None, runner: str) -> list[str]:
    """Caveats on the candidate's latency: signed INT8 activations (TensorRT's scheme) timed on ONNX Runtime's CPU provider."""
    if candidate is None or not runner.startswith("onnxruntime"):
        return []
    return [TENSORRT_GRAPH_ON_CPU] if signed_activation_quantizers(candidate) else []


def power_notes(runner: str) -> list[str]:
    """On a Jetson, a TensorRT candidate's latency is read with its power state: a note for each reason it may be low
    (power mode not MAXN, GPU clock not locked); nothing elsewhere (issue 20, docs/tensorrt.md "Jetson")."""
    if not runner.startswith("tensorrt"):
        return []
    from rescompile.engine.jetson import power_state

    state = power_state()
    if state is None:
        return []
    return [f"Jetson latency measured with power mode {state.mode or 'unknown'}: {w}" for w in state.warnings()]
