"""Notes a report carries about what its numbers mean, read from the candidate graph and its runner."""

from __future__ import annotations

import onnx

TENSORRT_GRAPH_ON_CPU = (
    "The candidate is placed for TensorRT: signed INT8 activations with Q/DQ on op inputs only, which "
    "TensorRT fuses into INT8 Conv+Add+ReLU kernels. ONNX Runtime's CPU provider has no INT8 kernel for "
    "that form and runs it as DequantizeLinear + FP32 ops, so the INT8 latency here is not the engine's "
    "and is expected to be slower than FP32; the accuracy numbers are what this run measures. For an "
    "INT8 model that is fast on this CPU, build with --policy onnxruntime."
)


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


def latency_notes(candidate: onnx.ModelProto | None, runner: str) -> list[str]:
    """Caveats on the candidate's latency: a TensorRT-placed INT8 graph timed on ONNX Runtime's CPU provider."""
    if candidate is None or not runner.startswith("onnxruntime"):
        return []
    return [TENSORRT_GRAPH_ON_CPU] if signed_activation_quantizers(candidate) else []
