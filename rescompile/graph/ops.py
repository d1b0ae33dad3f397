"""Op tables shared by topology, placement policies and the proof: each list lives here once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the op tables import without onnx
    import onnx

# Ops with a weight initializer that placement quantizes per channel (rule R2/O7).
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
# Linear ops that make a shortcut a projection (ConvTranspose stays float: not quantized).
LINEAR_OPS = (*WEIGHTED_OPS, "ConvTranspose")
POOL_OPS = ("AveragePool", "MaxPool")
# Ops that only move or reshape data: their output is within their input's range.
RESHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")
# R7: ops whose output takes the input's scale (max, averages over a window and reshapes stay in range).
SCALE_PRESERVING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", *RESHAPE_OPS)
# O5: ops ONNX Runtime runs on uint8 data (or drops the Q/DQ pair around) when input and output share one scale.
SAME_SCALE_OPS = ("MaxPool", *RESHAPE_OPS)
# Residual merges: a two-input Add (or Sum) of two activations.
ADD_OPS = ("Add", "Sum")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# G1: ops whose subgraphs or semantics placement cannot see through: refused with exit 2, never guessed.
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
STANDARD_DOMAINS = ("", "ai.onnx")


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted op's weight: 0 for Conv, for Gemm 0 with transB else 1, 1 for MatMul."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: W is K x N
