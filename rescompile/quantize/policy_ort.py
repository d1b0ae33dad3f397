"""The ``onnxruntime`` placement policy: Q/DQ where ONNX Runtime's CPU provider fuses QLinear kernels, and its proof checks.

Rules O1-O8 (docs/placement-rules.md).

ONNX Runtime turns a ``DequantizeLinear -> op -> QuantizeLinear`` group into one INT8 kernel
(QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool, QLinearAveragePool, NhwcMaxPool
...) only when every input of the op comes from a DequantizeLinear and every edge leaving it
goes into a QuantizeLinear. So, unlike ``tensorrt``, op *outputs* are quantized too, and:

- activations are UINT8 asymmetric per tensor (on x86 the u8s8 kernels are the fast ones;
  symmetric INT8 activations ran slower than FP32 here), weights INT8 symmetric per channel
  holding 7-bit values [-63, 63], biases INT32 with scale = input scale x weight scale (what
  QGemm requires). 7 bits because the u8s8 kernels of x86 CPUs without VNNI (AVX2, AVX-512
  without VNNI) add two uint8 x int8 products into a saturating int16 (``vpmaddubsw``):
  255 x 127 x 2 = 64,770 overflows 32,767 and the fused model drifts from its own Q/DQ
  arithmetic (1.7-3.9 points of top-1 on three of benchmarks/results/accuracy_hard.md),
  255 x 63 x 2 = 32,130 never does (O7);
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

import numpy as np
import onnx
from onnx import TensorProto

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import RESHAPE_OPS, SAME_SCALE_OPS, weight_axis
from rescompile.graph.qdq import (
    QdqView,
    VerifyReport,
    Violation,
    activation_quantizers,
    bias_dequantizers,
    check_same_scale,
    quantized_weighted_ops,
    residual_views,
)
from rescompile.graph.topology import constant_tensors, find_residual_blocks
from rescompile.quantize.policy import (
    BiasQuant,
    BlockPlan,
    QuantPlan,
    Requests,
    WeightQuant,
    kept_nodes,
    weighted_nodes,
)

# Ops the CPU provider runs as INT8 kernels in a DQ -> op -> Q group, by kind.
KERNELS = {
    "Conv": "QLinearConv",
    "Gemm": "QGemm",
    "MatMul": "MatMulIntegerToFloat/QLinearMatMul",
    "Add": "QLinearAdd",
    "Mul": "QLinearMul",
    "GlobalAveragePool": "QLinearGlobalAveragePool",
    "AveragePool": "QLinearAveragePool",
    "MaxPool": "NhwcMaxPool (uint8)",
}
BINARY_OPS = ("Add", "Mul")
POOL_OPS = ("GlobalAveragePool", "AveragePool")
PASS_THROUGH_OPS = RESHAPE_OPS
FUSABLE_ACTIVATIONS = ("Relu",)
WEIGHT_BITS = 7  # O7: |w| <= 63, so two uint8 x int8 products never overflow int16 (255 * 63 * 2 = 32,130)
WEIGHT_QMAX = 2 ** (WEIGHT_BITS - 1) - 1
WEIGHT_SCHEME = f"int8 holding {WEIGHT_BITS}-bit values [-{WEIGHT_QMAX}, {WEIGHT_QMAX}], symmetric per-channel (zero point 0)"

ORT_RULES = {
    "O1": "input of an op ONNX Runtime runs as an INT8 kernel (DequantizeLinear feeds it)",
    "O2": "output of an INT8 kernel (ONNX Runtime needs a QuantizeLinear after each QLinear op)",
    "O3": "after the ReLU that follows a Conv/Add: zero point 0, ONNX Runtime folds the ReLU into the Q",
    "O4": "residual Add: both inputs and the output are quantized, so it runs as QLinearAdd",
    "O5": "same scale as its input: MaxPool/Flatten/Reshape run on uint8 data (the Q/DQ pair is dropped)",
    "O6": "one shared Q/DQ per tensor, read by every consumer (a float edge out of an INT8 kernel stops its fusion)",
    "O7": "weights: per-channel symmetric, 7-bit values [-63, 63] stored as INT8 (axis = output channels), zero point 0: "
    "no int16 saturation in ONNX Runtime's u8s8 kernels",
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
        "onnxruntime",
        kept_fp=sorted(kept),
        scheme={
            "activations": "uint8, asymmetric per-tensor (zero point from min/max)",
            "weights": WEIGHT_SCHEME,
            "bias": "int32, zero point 0, scale = input scale x weight scale",
        },
        rules=dict(ORT_RULES),
    )
    req = Requests(idx, SAME_SCALE_OPS, symmetric=False, dtype="uint8")
    _request_kernel_tensors(model, idx, const, kept, plan, req)
    _pass_through_reshapes(model, idx, kept, req)
    _share_fanouts(idx, req)
    plan.activations = req.ordered(model)
    plan.residual_adds = _block_plans(model, idx, kept, req)
    return plan


def _activation_inputs(node: onnx.NodeProto, const: set[str]) -> list[int]:
    """The indices of ``node``'s inputs that are activations (not constants)."""
    return [i for i, t in enumerate(node.input) if t and t not in const]


def _request_kernel_tensors(
    model: onnx.ModelProto, idx: GraphIndex, const: set[str], kept: set[str], plan: QuantPlan, req: Requests
) -> None:
    """Weights and biases into ``plan``, and the inputs and outputs of every INT8 kernel into ``req`` (O1-O5, O7, O8)."""
    weighted = {node_name(n): n for n in weighted_nodes(model, idx)}
    residual = {b.add for b in find_residual_blocks(model)}
    for node in model.graph.node:
        name = node_name(node)
        if name in kept:
            continue
        acts = _activation_inputs(node, const)
        if name in weighted:
            req.add(node.input[0], f"O1: input of {node.op_type} ({KERNELS[node.op_type]})")
            w = node.input[1]
            rule = "O7: weights per-channel symmetric, 7 bits"
            plan.weights.append(WeightQuant(w, name, node.op_type, weight_axis(node), rule, bits=WEIGHT_BITS))
            if len(node.input) > 2 and node.input[2] in idx.initializers:
                plan.biases.append(BiasQuant(node.input[2], name, node.input[0], w, 0, "O8: bias INT32, scale = input x weight scale"))
            feeds_int8 = any(_is_int8_candidate(c, weighted, kept, const) for c, _ in idx.consumers.get(node.output[0], []))
            if node.op_type == "Conv" or (feeds_int8 and node.output[0] not in idx.graph_outputs):
                req.add(*_closing_tensor(idx, node, kept))
        elif node.op_type in BINARY_OPS and len(acts) == 2:
            rule = "O4: residual Add input (QLinearAdd)" if name in residual else f"O1: input of {node.op_type}"
            for i in acts:
                req.add(node.input[i], rule)
            req.add(*_closing_tensor(idx, node, kept))
        elif node.op_type in POOL_OPS and acts == [0]:
            req.add(node.input[0], f"O1: input of {node.op_type} ({KERNELS[node.op_type]})")
            req.add(node.output[0], f"O2: output of {node.op_type} {name} ({KERNELS[node.op_type]})")
        elif node.op_type == "MaxPool" and acts == [0] and len([o for o in node.output if o]) == 1:
            req.add(node.input[0], "O1: input of MaxPool (NhwcMaxPool)")
            req.add(node.output[0], "O5: MaxPool output, same scale as its input")


def _pass_through_reshapes(model: onnx.ModelProto, idx: GraphIndex, kept: set[str], req: Requests) -> None:
    """Reshapes between INT8 ops pass quantized data through with the same scale (fixed point:
    a chain Flatten -> Reshape is resolved in as many passes as it is long)."""
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if (
                node.op_type in PASS_THROUGH_OPS
                and node_name(node) not in kept
                and node.input[0] in req
                and node.output[0] not in req
                and node.output[0] not in idx.graph_outputs
            ):
                req.add(node.output[0], f"O5: {node.op_type} output, same scale as its input")
                changed = True


def _share_fanouts(idx: GraphIndex, req: Requests) -> None:
    """Every consumer reads the one Q/DQ pair of a quantized tensor (O6)."""
    for t, q in req.by_tensor.items():
        for consumer, i in idx.consumers.get(t, []):
            req.add(t, q.rules[0], consumer, i)
        if len(q.consumers) > 1:
            q.rules.append("O6: one shared Q/DQ at a fan-out, read by every consumer")
        if q.scale_from != t:
            q.rules.append(f"O5: scale taken from {q.scale_from}")


def _block_plans(model: onnx.ModelProto, idx: GraphIndex, kept: set[str], req: Requests) -> list[BlockPlan]:
    """What happens to every residual Add: QLinearAdd when both inputs and its output are quantized, else a float Add."""
    by_name = {node_name(n): n for n in model.graph.node}
    blocks = []
    for b in find_residual_blocks(model):
        add = by_name[b.add]
        quantized = [t for t in (b.shortcut, b.main) if t in req]
        closing = _closing_tensor(idx, add, kept)[0]
        output = closing if closing in req else None
        fused = b.add not in kept and len(quantized) == 2 and output is not None
        blocks.append(
            BlockPlan(
                b.add,
                b.main,
                b.main_producer,
                b.shortcut,
                b.shortcut_kind,
                b.follower,
                quantized,
                fused,
                output,
                ("QLinearAdd" + (" (ReLU folded into its Q)" if output != b.output else "")) if fused else "float Add",
                "O4: both inputs and the output quantized" if b.add not in kept else "R8: Add kept in higher precision",
                b.output,
            )
        )
    return blocks


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


class OnnxRuntimePolicy:
    """QDQ for ONNX Runtime's CPU provider (QLinear kernels, u8s8)."""

    name = "onnxruntime"
    summary = "Q/DQ around every op ONNX Runtime's CPU provider runs as a QLinear kernel; UINT8 activations"
    backend = "onnxruntime"
    scheme = {
        "activations": "uint8, asymmetric per-tensor (zero point from min/max)",
        "weights": WEIGHT_SCHEME,
        "bias": "int32, zero point 0, scale = input scale x weight scale",
    }
    rules = ORT_RULES

    def plan(self, model: onnx.ModelProto, *, keep_fp: tuple[str, ...] = (), keep_first_last: bool = False) -> QuantPlan:
        return plan_onnxruntime(model, keep_fp=keep_fp, keep_first_last=keep_first_last)

    def detect(self, view: QdqView) -> bool:
        """UINT8 activations."""
        return any(view.qparams(q)[2] == TensorProto.UINT8 for qs in view.q_of.values() for q in qs)

    def check(self, fp32: onnx.ModelProto, view: QdqView, report: VerifyReport, kept: set[str]) -> None:
        v, c, idx = report.violations, report.checks, view.idx
        relu_outputs = {n.output[0] for n in idx.graph.node if n.op_type == "Relu"}
        for q, _, zp, zp_type in activation_quantizers(view):
            c["zero-point"] += 1
            c["dtype"] += 1
            if zp_type != TensorProto.UINT8:
                v.append(Violation("dtype", node_name(q), "activations must be UINT8 (ONNX Runtime's fast u8s8 kernels)"))
            if q.input[0] in relu_outputs and zp is not None and np.any(zp != 0):
                v.append(
                    Violation(
                        "zero-point",
                        node_name(q),
                        f"zero point {int(np.ravel(zp)[0])} after a ReLU, must be 0 so ONNX Runtime folds the ReLU (O3)",
                    )
                )
        for t in view.q_of:
            floats = [x for x, _ in idx.consumers.get(t, []) if x.op_type != "QuantizeLinear"]
            if floats:
                v.append(
                    Violation(
                        "fan-out",
                        node_name(floats[0]),
                        f"reads float {t} while {t} is quantized; every consumer "
                        "must read its Q/DQ or ONNX Runtime cannot fuse the producer (O6)",
                    )
                )
        for dq, consumer, stored, scale in bias_dequantizers(view):
            c["dtype"] += 1
            if stored.dtype != np.int32:
                v.append(Violation("dtype", node_name(dq), f"bias of {node_name(consumer)} is {stored.dtype}, must be INT32 (O8)"))
            x = view.act_qparams(consumer.input[0])
            w = view.const_dq.get(consumer.input[1])
            if x is None or w is None or scale is None:
                v.append(Violation("fusion", node_name(consumer), "an INT32 bias needs a quantized input and weight (O8)"))
                continue
            ws = view.qparams(w)[0]
            c["scale"] += 1
            if x[0] is None or ws is None or np.shape(ws) != np.shape(scale) or not np.allclose(scale, x[0] * ws, rtol=1e-5, atol=0):
                v.append(Violation("scale", node_name(dq), "bias scale must equal input scale x weight scale (O8)"))
        check_same_scale(view, report, "O5")
        for r in residual_views(fp32, view, report, kept):
            b = r.block
            for t, role in ((b.shortcut, "shortcut"), (b.main, "main-branch")):
                if t not in r.quantized:
                    v.append(
                        Violation(
                            "residual",
                            b.add,
                            f"{role} input {t} is not quantized; the onnxruntime policy quantizes both inputs (O4: QLinearAdd)",
                        )
                    )
            out = r.follower.output[0] if r.follower is not None else b.output
            if out not in view.q_of:
                v.append(Violation("residual", b.add, f"{out} is not quantized; ONNX Runtime runs the Add in float (O4)"))
        for n in quantized_weighted_ops(view, report, kept):
            _check_kernel(view, report, n, kept)


def _check_kernel(view: QdqView, report: VerifyReport, n: onnx.NodeProto, kept: set[str]) -> None:
    """O1/O2/O3/O8: a weighted op's input, output (after its ReLU) and bias quantized; nothing between it and its ReLU."""
    v, idx, name, out = report.violations, view.idx, node_name(n), n.output[0]
    consumers = idx.consumers.get(out, [])
    if n.input[0] not in view.act_dq:
        v.append(Violation("fusion", name, f"input {n.input[0]} is not quantized (O1)"))
    relu = consumers[0][0] if len(consumers) == 1 and consumers[0][0].op_type == "Relu" else None
    relu_behind_qdq = None
    for q in view.q_of.get(out, []):
        for dq, _ in idx.consumers.get(q.output[0], []):
            relu_behind_qdq = relu_behind_qdq or next((c for c, _ in idx.consumers.get(dq.output[0], []) if c.op_type == "Relu"), None)
    if relu_behind_qdq is not None and node_name(relu_behind_qdq) not in kept:
        v.append(
            Violation("fusion", name, f"a Q/DQ sits between {name} and its ReLU {node_name(relu_behind_qdq)}; quantize after the ReLU (O3)")
        )
    elif relu is not None:
        if relu.output[0] not in view.q_of:
            v.append(Violation("fusion", name, f"{node_name(relu)} output is not quantized; ONNX Runtime runs {name} in float (O3)"))
    elif out not in view.q_of and n.op_type == "Conv":
        v.append(Violation("fusion", name, f"output {out} is not quantized; ONNX Runtime runs it in float (O2)"))
    if len(n.input) > 2 and n.input[2] and n.input[2] not in view.const_dq:
        v.append(Violation("fusion", name, f"bias {n.input[2]} is float; the onnxruntime policy stores it INT32 (O8)"))
    w_dq = view.const_dq.get(n.input[1])
    stored = view.idx.constant_value(w_dq.input[0]) if w_dq is not None else None
    if stored is not None and stored.dtype == np.int8:
        report.checks["dtype"] += 1
        peak = int(np.abs(stored.astype(np.int16)).max(initial=0))
        if peak > WEIGHT_QMAX:
            v.append(
                Violation(
                    "dtype",
                    name,
                    f"weights reach {peak}, above {WEIGHT_QMAX}: two uint8 x int8 products can overflow the int16 sums "
                    "of ONNX Runtime's u8s8 kernels on x86 without VNNI (O7)",
                )
            )


POLICY = OnnxRuntimePolicy()  # what registry.get_policy("onnxruntime") registers
