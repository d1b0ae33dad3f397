"""The ``tensorrt`` placement policy: Q/DQ where TensorRT fuses INT8 kernels, and its own proof checks.

Rules R1-R8 (docs/placement-rules.md): per-channel symmetric INT8 weights; symmetric per-tensor
INT8 activations on the inputs of weighted ops; a weighted op's output quantized only where a
weighted op reads it (TensorRT fuses that Q into the producer); on each residual Add the shortcut
input is quantized and the main-branch input is not, so TensorRT fuses Conv+Add(+ReLU) into one
INT8 kernel; one shared Q/DQ per tensor at fan-outs; pooling and reshapes take their input's scale.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import ADD_OPS, SCALE_PRESERVING_OPS, WEIGHTED_OPS, weight_axis
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
from rescompile.graph.topology import find_residual_blocks
from rescompile.quantize.policy import QuantPlan, Requests, WeightQuant, block_plan, kept_nodes, weighted_nodes

RULES = {
    "R2": "weights: per-channel symmetric INT8 (axis = output channels), zero point 0; bias stays float",
    "R3": "activations: per-tensor symmetric INT8, zero point 0",
    "R4": "input of a weighted op (Conv/Gemm/MatMul); a weighted op's output only where a weighted op reads it "
    "(TensorRT fuses that Q into the producer), never on the main-branch edge into a residual Add",
    "R5": "residual Add: the shortcut input is quantized, the main-branch input is not (Conv+Add+ReLU fusion)",
    "R6": "one shared Q/DQ at a fan-out: one scale for every consumer",
    "R7": "pooling and reshapes take the scale of their input",
    "R8": "kept in higher precision (--keep-fp / --keep-first-last): no Q/DQ on its inputs, float weights",
}


def plan_tensorrt(model: onnx.ModelProto, *, keep_fp: tuple[str, ...] = (), keep_first_last: bool = False) -> QuantPlan:
    """The ``tensorrt`` placement (rules R2-R8, docs/placement-rules.md); see plan_qdq."""
    idx = GraphIndex.build(model.graph)
    kept = kept_nodes(model, keep_fp, keep_first_last)
    plan = QuantPlan(
        "tensorrt",
        kept_fp=sorted(kept),
        scheme={
            "activations": "int8, symmetric per-tensor (zero point 0)",
            "weights": "int8, symmetric per-channel (zero point 0)",
            "bias": "float",
        },
        rules=dict(RULES),
    )
    req = Requests(idx, SCALE_PRESERVING_OPS, symmetric=True, dtype="int8")
    for node in weighted_nodes(model, idx):
        if node_name(node) in kept:
            continue
        req.add(node.input[0], "R4: input of weighted op", node, 0)
        plan.weights.append(WeightQuant(node.input[1], node_name(node), node.op_type, weight_axis(node)))

    by_name = {node_name(n): n for n in model.graph.node}
    for b in find_residual_blocks(model):
        add = by_name[b.add]
        quantized: list[str] = []
        if b.add not in kept:
            req.add(b.shortcut, "R5: residual shortcut input", add, list(add.input).index(b.shortcut))
            quantized.append(b.shortcut)
        fused = b.main_producer_op == "Conv" and b.main_producer not in kept and b.add not in kept
        plan.residual_adds.append(
            block_plan(
                b,
                quantized,
                fused,
                None,
                "Conv+Add" + ("+ReLU" if b.follower else "") + " fused INT8 kernel"
                if fused
                else f"not fused: {'kept in FP' if b.main_producer in kept or b.add in kept else b.main_producer_op + ' before the Add'}",
                "R5: shortcut quantized, main branch not" if b.add not in kept else "R8: Add kept in higher precision",
            )
        )
    plan.activations = req.ordered(model)
    for q in plan.activations:
        if len(q.consumers) > 1:
            q.rules.append("R6: one shared Q/DQ at a fan-out")
        if q.scale_from != q.tensor:
            q.rules.append(f"R7: scale taken from {q.scale_from}, the input of a scale-preserving op")
    return plan


class TensorRTPolicy:
    """Explicit Q/DQ for TensorRT 10/11 (strongly typed INT8 engines)."""

    name = "tensorrt"
    summary = "Q/DQ where TensorRT fuses INT8 kernels (Conv+Add+ReLU); symmetric INT8"
    backend = "tensorrt"
    scheme = {
        "activations": "int8, symmetric per-tensor (zero point 0)",
        "weights": "int8, symmetric per-channel (zero point 0)",
        "bias": "float",
    }
    rules = RULES

    def plan(self, model: onnx.ModelProto, *, keep_fp: tuple[str, ...] = (), keep_first_last: bool = False) -> QuantPlan:
        return plan_tensorrt(model, keep_fp=keep_fp, keep_first_last=keep_first_last)

    def detect(self, view: QdqView) -> bool:
        """INT8 activations (or none at all)."""
        return all(view.qparams(q)[2] in (None, TensorProto.INT8) for qs in view.q_of.values() for q in qs)

    def check(self, fp32: onnx.ModelProto, view: QdqView, report: VerifyReport, kept: set[str]) -> None:
        v, c = report.violations, report.checks
        for q, _, zp, zp_type in activation_quantizers(view):
            c["zero-point"] += 1
            c["dtype"] += 1
            if zp_type not in (None, TensorProto.INT8):
                v.append(Violation("dtype", node_name(q), "activations must be INT8 (R3)"))
            if zp is not None and np.any(zp != 0):
                v.append(
                    Violation(
                        "zero-point",
                        node_name(q),
                        f"zero point {int(np.ravel(zp)[0])}, must be 0 (R3: symmetric INT8, as TensorRT requires)",
                    )
                )
        for dq, consumer, _, _ in bias_dequantizers(view):
            c["dtype"] += 1
            v.append(Violation("dtype", node_name(dq), f"bias of {node_name(consumer)} is quantized; R2 keeps biases float"))
        check_same_scale(view, report, "R7")
        for r in residual_views(fp32, view, report, kept):
            b = r.block
            if b.main in r.quantized:
                v.append(
                    Violation(
                        "residual",
                        b.add,
                        f"main-branch input {b.main} (from {b.main_producer}) is quantized; "
                        "the tensorrt policy leaves it float so Conv+Add fuse (R5)",
                    )
                )
            if b.shortcut not in r.quantized:
                v.append(
                    Violation("residual", b.add, f"shortcut input {b.shortcut} is not quantized; the tensorrt policy quantizes it (R5)")
                )
        shortcuts = {b.shortcut for b in find_residual_blocks(fp32)}
        for n in quantized_weighted_ops(view, report, kept):
            if n.input[0] not in view.act_dq:
                v.append(Violation("fusion", node_name(n), f"input {n.input[0]} is not quantized (R4)"))
            _check_output(view, report, n, shortcuts)


def _check_output(view: QdqView, report: VerifyReport, n: onnx.NodeProto, shortcuts: set[str]) -> None:
    """R4: a weighted op's output is quantized only for consumers that need a quantized input.

    Those are weighted ops (a linear-bottleneck Conv feeding the next Conv: TensorRT fuses the Q
    into the producer as an INT8 output) and residual Adds reading it as their shortcut (R5).
    Any other consumer of that Q/DQ (a ReLU, a Concat ...) would split the producer's fusion.
    """
    out = n.output[0]
    for q in view.q_of.get(out, []):
        for dq, _ in view.idx.consumers.get(q.output[0], []):
            for c, i in view.idx.consumers.get(dq.output[0], []):
                needs = (c.op_type in WEIGHTED_OPS and i == 0) or (c.op_type in ADD_OPS and out in shortcuts)
                if not needs:
                    report.violations.append(
                        Violation(
                            "fusion",
                            node_name(n),
                            f"output {out} is quantized for {node_name(c)} ({c.op_type}), which does "
                            "not need a quantized input; R4 quantizes a weighted op's output only for a weighted op or a "
                            "residual shortcut (R5)",
                        )
                    )


POLICY = TensorRTPolicy()  # what registry.get_policy("tensorrt") registers
