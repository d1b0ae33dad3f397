"""The ``onnxruntime`` placement policy: Q/DQ where ONNX Runtime's CPU provider fuses QLinear kernels.

ONNX Runtime turns a ``DequantizeLinear -> op -> QuantizeLinear`` group into one INT8 kernel
(QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool, QLinearAveragePool, NhwcMaxPool
...) only when every input of the op comes from a DequantizeLinear and every edge leaving it
goes into a QuantizeLinear. So, unlike ``tensorrt``, op *outputs* are quantized too, and:

- activations are UINT8 asymmetric per tensor (on x86 the u8s8 kernels are the fast ones;
  symmetric INT8 activations ran slower than FP32 here), weights INT8 symmetric per channel,
  biases INT32 with scale = input scale x weight scale (what QGemm requires);
- a ReLU right after a Conv or Add stays in the graph, and the Q goes after it: with zero
  point 0 the runtime folds the ReLU into the Q, and the topology is untouched;
- both inputs and the output of every residual Add are quantized (QLinearAdd);
- MaxPool and reshapes keep their input's scale (the runtime drops equal-scale Q/DQ pairs);
- a quantized tensor is read through its one Q/DQ by *every* consumer, including a layer
  kept in FP, because one float edge out of an INT8 kernel would stop its fusion;
- a Gemm/MatMul whose result is not consumed by an INT8 op keeps a float output (QGemm can
  emit float), so the logits are not quantized.
"""

from __future__ import annotations

import onnx

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import RESHAPE_OPS, SAME_SCALE_OPS
from rescompile.graph.topology import constant_tensors, find_residual_blocks
from rescompile.quantize.policy import (
    BiasQuant,
    BlockPlan,
    Policy,
    QuantPlan,
    Requests,
    WeightQuant,
    kept_nodes,
    weight_axis,
    weighted_nodes,
)

# Ops the CPU provider runs as INT8 kernels in a DQ -> op -> Q group, by kind.
KERNELS = {
    "Conv": "QLinearConv", "Gemm": "QGemm", "MatMul": "MatMulIntegerToFloat/QLinearMatMul",
    "Add": "QLinearAdd", "Mul": "QLinearMul", "GlobalAveragePool": "QLinearGlobalAveragePool",
    "AveragePool": "QLinearAveragePool", "MaxPool": "NhwcMaxPool (uint8)",
}  # fmt: skip
BINARY_OPS = ("Add", "Mul")
POOL_OPS = ("GlobalAveragePool", "AveragePool")
PASS_THROUGH_OPS = RESHAPE_OPS
FUSABLE_ACTIVATIONS = ("Relu",)

ORT_RULES = {
    "O1": "input of an op ONNX Runtime runs as an INT8 kernel (DequantizeLinear feeds it)",
    "O2": "output of an INT8 kernel (ONNX Runtime needs a QuantizeLinear after each QLinear op)",
    "O3": "after the ReLU that follows a Conv/Add: zero point 0, ONNX Runtime folds the ReLU into the Q",
    "O4": "residual Add: both inputs and the output are quantized, so it runs as QLinearAdd",
    "O5": "same scale as its input: MaxPool/Flatten/Reshape run on uint8 data (the Q/DQ pair is dropped)",
    "O6": "one shared Q/DQ per tensor, read by every consumer (a float edge out of an INT8 kernel stops its fusion)",
    "O7": "weights: per-channel symmetric INT8 (axis = output channels), zero point 0",
    "O8": "bias: INT32, zero point 0, scale = input scale x weight scale (QLinearConv/QGemm)",
    "R8": "kept in higher precision (--keep-fp / --keep-first-last): float op, float weights",
}


def _closing_tensor(idx: GraphIndex, node: onnx.NodeProto, kept: set[str]) -> tuple[str, str]:
    """The tensor whose Q closes ``node``'s INT8 group, and the rule: after a sole ReLU, else the output."""
    out = node.output[0]
    consumers = idx.consumers.get(out, [])
    if len(consumers) == 1 and out not in idx.graph_outputs:
        follower = consumers[0][0]
        if follower.op_type in FUSABLE_ACTIVATIONS and node_name(follower) not in kept:
            return follower.output[0], f"O3: after the {follower.op_type} that follows {node.op_type} {node_name(node)}"
    return out, f"O2: output of {node.op_type} {node_name(node)} ({KERNELS[node.op_type]})"


def plan_onnxruntime(model: onnx.ModelProto, *, keep_fp: tuple[str, ...] = (), keep_first_last: bool = False) -> QuantPlan:
    """The ``onnxruntime`` placement and scheme for ``model`` (FP32, simplified, BatchNorm folded).

    Args:
        keep_fp: node-name globs or op types to leave in higher precision.
        keep_first_last: keep the first and the last weighted layer in higher precision.

    Returns:
        A QuantPlan with UINT8 asymmetric activations, INT8 per-channel weights, INT32 biases.
    """
    idx = GraphIndex.build(model.graph)
    const = constant_tensors(idx)
    kept = kept_nodes(model, keep_fp, keep_first_last)
    plan = QuantPlan(
        Policy.ONNXRUNTIME.value, kept_fp=sorted(kept),
        scheme={"activations": "uint8, asymmetric per-tensor (zero point from min/max)",
                "weights": "int8, symmetric per-channel (zero point 0)",
                "bias": "int32, zero point 0, scale = input scale x weight scale"},
        rules=dict(ORT_RULES),
    )  # fmt: skip
    req = Requests(idx, SAME_SCALE_OPS, symmetric=False, dtype="uint8")

    def acts(node: onnx.NodeProto) -> list[int]:
        return [i for i, t in enumerate(node.input) if t and t not in const]

    weighted = {node_name(n): n for n in weighted_nodes(model, idx)}
    residual = {b.add for b in find_residual_blocks(model)}
    for node in model.graph.node:
        name = node_name(node)
        if name in kept:
            continue
        if name in weighted:
            req.add(node.input[0], f"O1: input of {node.op_type} ({KERNELS[node.op_type]})")
            w = node.input[1]
            plan.weights.append(WeightQuant(w, name, node.op_type, weight_axis(node), "O7: weights per-channel symmetric INT8"))
            if len(node.input) > 2 and node.input[2] in idx.initializers:
                plan.biases.append(BiasQuant(node.input[2], name, node.input[0], w, 0, "O8: bias INT32, scale = input x weight scale"))
            feeds_int8 = any(_is_int8_candidate(c, weighted, kept, const) for c, _ in idx.consumers.get(node.output[0], []))
            if node.op_type == "Conv" or (feeds_int8 and node.output[0] not in idx.graph_outputs):
                req.add(*_closing_tensor(idx, node, kept))
        elif node.op_type in BINARY_OPS and len(acts(node)) == 2:
            rule = "O4: residual Add input (QLinearAdd)" if name in residual else f"O1: input of {node.op_type}"
            for i in acts(node):
                req.add(node.input[i], rule)
            req.add(*_closing_tensor(idx, node, kept))
        elif node.op_type in POOL_OPS and acts(node) == [0]:
            req.add(node.input[0], f"O1: input of {node.op_type} ({KERNELS[node.op_type]})")
            req.add(node.output[0], f"O2: output of {node.op_type} {name} ({KERNELS[node.op_type]})")
        elif node.op_type == "MaxPool" and acts(node) == [0] and len([o for o in node.output if o]) == 1:
            req.add(node.input[0], "O1: input of MaxPool (NhwcMaxPool)")
            req.add(node.output[0], "O5: MaxPool output, same scale as its input")

    # Reshapes between INT8 ops pass quantized data through with the same scale (fixed point:
    # a chain Flatten -> Reshape is resolved in as many passes as it is long).
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if (node.op_type in PASS_THROUGH_OPS and node_name(node) not in kept and node.input[0] in req
                    and node.output[0] not in req and node.output[0] not in idx.graph_outputs):  # fmt: skip
                req.add(node.output[0], f"O5: {node.op_type} output, same scale as its input")
                changed = True

    # Every consumer reads the one Q/DQ pair of a quantized tensor (O6).
    for t, q in req.by_tensor.items():
        for consumer, i in idx.consumers.get(t, []):
            req.add(t, q.rules[0], consumer, i)
        if len(q.consumers) > 1:
            q.rules.append("O6: one shared Q/DQ at a fan-out, read by every consumer")
        if q.scale_from != t:
            q.rules.append(f"O5: scale taken from {q.scale_from}")
    plan.activations = req.ordered(model)

    by_name = {node_name(n): n for n in model.graph.node}
    for b in find_residual_blocks(model):
        add = by_name[b.add]
        quantized = [t for t in (b.shortcut, b.main) if t in req]
        closing = _closing_tensor(idx, add, kept)[0]
        output = closing if closing in req else None
        fused = b.add not in kept and len(quantized) == 2 and output is not None
        plan.residual_adds.append(BlockPlan(
            b.add, b.main, b.main_producer, b.shortcut, b.shortcut_kind, b.follower, quantized, fused, output,
            ("QLinearAdd" + (" (ReLU folded into its Q)" if output != b.output else "")) if fused else "float Add",
            "O4: both inputs and the output quantized" if b.add not in kept else "R8: Add kept in higher precision",
            b.output,
        ))  # fmt: skip
    return plan


def _is_int8_candidate(node: onnx.NodeProto, weighted: dict[str, onnx.NodeProto], kept: set[str], const: set[str]) -> bool:
    """Whether ``node`` will run as an INT8 kernel under this policy (so its input is worth a Q)."""
    if node_name(node) in kept:
        return False
    if node_name(node) in weighted:
        return True
    acts = [t for t in node.input if t and t not in const]
    if node.op_type in BINARY_OPS:
        return len(acts) == 2
    return node.op_type in (*POOL_OPS, "MaxPool", *FUSABLE_ACTIVATIONS, *PASS_THROUGH_OPS)
