"""Proof that an INT8 graph keeps the FP32 topology and follows its placement policy.

Each check has a rule name; a violation names the rule, the node and what is wrong. This module
holds the generic proofs, the same for every policy:

- ``pairs``: every DequantizeLinear is fed by a QuantizeLinear (same scale and zero point)
  or by a quantized initializer; a QuantizeLinear feeds only DequantizeLinear nodes.
- ``topology``: with Q/DQ pairs removed, the INT8 graph is the FP32 graph node for node
  (op, attributes, outputs) and edge for edge (each input reads the same tensor, directly
  or through a Q/DQ pair); float initializers unchanged.
- ``weight-values``: a dequantized weight or bias is the FP32 one within half a step.
- ``scale``/``zero-point``/``dtype``/``weight-axis``: scales finite and > 0, activation scales
  per tensor; weights INT8 with zero point 0, per channel on the output-channel axis.
- ``fan-out``: one QuantizeLinear per tensor, so one scale at a fan-out.
- ``residual``: every residual Add is still there, nothing between an Add and its ReLU.
- ``plan``: when the plan is given, the graph quantizes exactly the planned tensors.

Each placement policy (rescompile/quantize/registry.py) adds its own checks through its
``check`` method — activation type and zero points, biases, which inputs of a residual Add and
which outputs of weighted ops are quantized — with the helpers of ``graph/qdq.py`` (where the
view of the Q/DQ and the report records live); their rule codes are defined in
docs/placement-rules.md. The caller passes the policy in (:func:`prove_int8`);
:func:`rescompile.quantize.verify.verify_int8` finds it by name or from the Q/DQ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnx

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import QDQ_OPS, WEIGHTED_OPS, weight_axis
from rescompile.graph.qdq import RULES, QdqView, VerifyReport, Violation, consumer_role
from rescompile.graph.topology import find_residual_blocks

__all__ = ["RULES", "Plan", "PolicyProof", "QdqView", "VerifyReport", "Violation", "prove_int8"]


def _attrs(node: onnx.NodeProto) -> dict[str, bytes]:
    return {a.name: a.SerializeToString() for a in node.attribute}


def _attr_i(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _dequantize(view: QdqView, dq: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """Dequantized value of a constant DQ (float64) and its half step, shaped to broadcast against it (for value
    comparisons); None when the scale or zero point does not fit the stored values."""
    q = view.idx.constant_value(dq.input[0])
    scale, zp, _ = view.qparams(dq)
    if q is None or scale is None:
        return None
    zp = np.zeros_like(scale) if zp is None else zp
    shape = [1] * q.ndim
    if np.ndim(scale) == 1 and q.ndim:
        axis = _attr_i(dq, "axis", 1) % q.ndim
        if scale.shape[0] != q.shape[axis]:
            return None
        shape[axis] = -1
    try:
        s = np.reshape(scale, shape if np.ndim(scale) else ()).astype(np.float64)
        z = np.reshape(zp, shape if np.ndim(zp) else ()).astype(np.float64)
        if np.broadcast_shapes(q.shape, s.shape, z.shape) != q.shape:
            return None
    except ValueError:  # a zero point (or a scale) of a size that fits no axis
        return None
    values = q.astype(np.float64)  # (q - z) * s, in place: weights are most of a model's bytes
    if np.any(z):
        values -= z
    values *= s
    return values, s / 2


class PlannedActivation(Protocol):
    """What the proof reads of a planned activation Q/DQ (``rescompile.quantize.policy.ActivationQuant``)."""

    @property
    def tensor(self) -> str: ...
    @property
    def consumers(self) -> Sequence[str]: ...


class PlannedWeight(Protocol):
    """What the proof reads of a planned weight (``rescompile.quantize.policy.WeightQuant``)."""

    @property
    def initializer(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def input_index(self) -> int: ...


class Plan(Protocol):
    """What the proof reads of a ``QuantPlan`` (typed structurally: the graph layer does not import quantize)."""

    @property
    def policy(self) -> str: ...
    @property
    def kept_fp(self) -> Sequence[str]: ...
    @property
    def activations(self) -> Sequence[PlannedActivation]: ...
    @property
    def weights(self) -> Sequence[PlannedWeight]: ...


class PolicyProof(Protocol):
    """What the proof asks of a placement policy (a ``rescompile.quantize.registry.PlacementPolicy``): its name and
    its own checks. The caller passes it in, so the graph layer does not import quantize."""

    @property
    def name(self) -> str: ...
    def check(self, fp32: onnx.ModelProto, view: QdqView, report: VerifyReport, kept: set[str]) -> None: ...


def prove_int8(fp32: onnx.ModelProto, int8: onnx.ModelProto, policy: PolicyProof, plan: Plan | None = None) -> VerifyReport:
    """Check ``int8`` against ``fp32``: the generic proofs, then ``policy``'s own (and ``plan``'s, a QuantPlan, when given).

    :func:`rescompile.quantize.verify.verify_int8` finds the policy by name (or from the Q/DQ) and calls this.

    Returns:
        A VerifyReport; ``ok`` is False when any rule is violated.
    """
    kept = set(plan.kept_fp if plan is not None else ())
    report = VerifyReport(policy.name)
    view = QdqView(int8)
    report.violations.extend(view.broken)
    report.checks["pairs"] = sum(n.op_type in QDQ_OPS for n in int8.graph.node)
    _check_topology(fp32, int8, view, report)
    _check_scheme(int8, view, report)
    report.residual_adds = len(find_residual_blocks(fp32))
    policy.check(fp32, view, report, kept)
    if plan is not None:
        _check_plan(plan, view, report)
    return report


def _stripped(int8: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in int8.graph.node if n.op_type not in QDQ_OPS]


def _check_topology(fp32: onnx.ModelProto, int8: onnx.ModelProto, view: QdqView, report: VerifyReport) -> None:
    v = report.violations
    fp_idx = GraphIndex.build(fp32.graph)
    nodes = _stripped(int8)
    report.checked_nodes = len(fp32.graph.node)
    by_outputs = {tuple(n.output): n for n in nodes}
    matched: set[int] = set()
    for a in fp32.graph.node:
        report.checks["topology"] += 1
        b = by_outputs.get(tuple(a.output))
        if b is None:
            v.append(Violation("topology", node_name(a), f"{a.op_type} -> {list(a.output)} is missing from the INT8 graph"))
            continue
        matched.add(id(b))
        if a.op_type != b.op_type or a.domain != b.domain:
            v.append(Violation("topology", node_name(b), f"expected {a.op_type}, found {b.op_type}"))
            continue
        if _attrs(a) != _attrs(b):
            v.append(Violation("topology", node_name(b), "attributes differ from the FP32 node"))
        if len(a.input) != len(b.input):
            v.append(Violation("topology", node_name(b), f"{len(b.input)} inputs, FP32 node has {len(a.input)}"))
            continue
        for i, (fa, fb) in enumerate(zip(a.input, b.input, strict=True)):
            _check_edge(fp_idx, view, report, b, i, fa, fb)
    for b in nodes:
        if id(b) not in matched:
            v.append(Violation("topology", node_name(b), f"{b.op_type} -> {list(b.output)} is not in the FP32 graph"))
    for what, xs, ys in (("inputs", fp32.graph.input, int8.graph.input), ("outputs", fp32.graph.output, int8.graph.output)):
        fx = [x.name for x in xs if x.name not in fp_idx.initializers]
        fy = [y.name for y in ys if y.name not in view.idx.initializers]
        if fx != fy:
            v.append(Violation("topology", "graph", f"graph {what} {fy} differ from FP32 {fx}"))


def _check_edge(fp_idx: GraphIndex, view: QdqView, report: VerifyReport, b: onnx.NodeProto, i: int, fa: str, fb: str) -> None:
    """One input edge: the same tensor, the same tensor through an activation Q/DQ, or a dequantized constant."""
    v = report.violations
    if fb in view.const_dq:
        report.checks["weight-values"] += 1
        want = fp_idx.constant_value(fa)
        got = _dequantize(view, view.const_dq[fb])
        if want is None:
            v.append(Violation("topology", node_name(b), f"input {i} is a dequantized constant, FP32 reads activation {fa}"))
        elif got is None or got[0].shape != want.shape:
            v.append(Violation("weight-values", node_name(b), f"input {i}: dequantized {fb} does not match the shape of {fa}"))
        elif (err := _beyond_half_step(*got, want)) is not None:
            v.append(Violation("weight-values", node_name(b), f"input {i}: dequantized {fb} differs from FP32 {fa} by {err:.3g}"))
        return
    origin = view.origin(fb)
    if origin != fa:
        how = f"{fb} (Q/DQ of {origin})" if origin != fb else fb
        v.append(Violation("topology", node_name(b), f"input {i} reads {how}; the FP32 graph reads {fa}"))
    elif fa in fp_idx.initializers:
        mine = view.idx.initializers.get(fb)
        if mine is None or mine.SerializeToString() != fp_idx.initializers[fa].SerializeToString():
            v.append(Violation("topology", node_name(b), f"initializer {fa} changed"))


def _beyond_half_step(values: np.ndarray, half: np.ndarray, want: np.ndarray) -> float | None:
    """The largest ``|values - want|`` if some element is off by more than its half step (``values`` is overwritten),
    else None."""
    diff = np.subtract(values, want, out=values, casting="unsafe")  # as float64, like want.astype(np.float64)
    np.abs(diff, out=diff)
    if np.any(diff > half * (1 + 1e-4) + 1e-7):
        return float(np.max(diff))
    return None


def _check_scheme(int8: onnx.ModelProto, view: QdqView, report: VerifyReport) -> None:
    """Generic scheme checks: finite positive scales, per-tensor activation scales, weights, one Q per tensor."""
    v, c = report.violations, report.checks
    for n in int8.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        scale, zp, zp_type = view.qparams(n)
        c["scale"] += 1
        if scale is None or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            v.append(Violation("scale", node_name(n), "scale must be a finite constant > 0"))
        if n.op_type == "QuantizeLinear":
            report.qdq_pairs += 1
            if scale is not None and np.ndim(scale) != 0:
                v.append(Violation("scale", node_name(n), "activation scale must be per-tensor (a scalar)"))
        elif n.output[0] in view.const_dq:
            _check_weight_dq(view, report, n, scale, zp)
    for t, qs in view.q_of.items():
        c["fan-out"] += 1
        if len(qs) > 1:
            v.append(
                Violation("fan-out", t, f"{len(qs)} QuantizeLinear nodes ({', '.join(node_name(q) for q in qs)}); one shared Q/DQ expected")
            )


def _check_weight_dq(view: QdqView, report: VerifyReport, n: onnx.NodeProto, scale: np.ndarray | None, zp: np.ndarray | None) -> None:
    """Weights and biases: zero point 0 (both policies); weights INT8, per channel on the output-channel axis."""
    v, c = report.violations, report.checks
    role = consumer_role(view, n.output[0])
    q = view.idx.constant_value(n.input[0])
    if role is None or q is None:
        return
    consumer, index = role
    c["zero-point"] += 1
    if zp is not None and np.any(zp != 0):
        v.append(Violation("zero-point", node_name(n), "weight/bias zero point must be 0 (symmetric)"))
    if consumer.op_type in WEIGHTED_OPS and index == 2:
        report.bias_dq += 1  # the policy checks its type and scale
        return
    if consumer.op_type not in WEIGHTED_OPS or index != 1:
        return
    report.weight_dq += 1
    c["dtype"] += 1
    if q.dtype != np.int8:
        v.append(Violation("dtype", node_name(n), f"weight of {node_name(consumer)} is {q.dtype}, must be INT8"))
    c["weight-axis"] += 1
    want = weight_axis(consumer)  # the axis placement quantized per channel (R2/O7)
    axis = _attr_i(n, "axis", 1)
    if scale is None or np.ndim(scale) != 1 or axis != want or scale.shape[0] != q.shape[want]:
        got = "per-tensor" if scale is None or np.ndim(scale) == 0 else f"axis {axis} with {scale.shape[0]} scales"
        v.append(
            Violation(
                "weight-axis",
                node_name(n),
                f"weight of {node_name(consumer)}: {got}; expected per-channel axis {want} with {q.shape[want]} scales",
            )
        )


def _check_plan(plan: Plan, view: QdqView, report: VerifyReport) -> None:
    v = report.violations
    planned = {a.tensor: a for a in plan.activations}
    nodes: dict[str, onnx.NodeProto] = {}  # by name, the first of a name (names are unique in a valid graph)
    for n in view.idx.graph.node:
        nodes.setdefault(node_name(n), n)
    for t, a in planned.items():
        report.checks["plan"] += 1
        qs = view.q_of.get(t)
        if not qs:
            v.append(Violation("plan", t, "planned Q/DQ is missing"))
            continue
        dq_outs = {c.output[0] for c, _ in view.idx.consumers.get(qs[0].output[0], [])}
        for ref in a.consumers:
            name, _, i = ref.rpartition(":")
            node = nodes.get(name)
            if node is None or int(i) >= len(node.input) or node.input[int(i)] not in dq_outs:
                v.append(Violation("plan", name, f"input {i} should read the Q/DQ of {t}"))
    for t in view.q_of:
        if t not in planned:
            report.checks["plan"] += 1
            v.append(Violation("plan", t, "quantized, but the plan does not quantize it"))
    for w in plan.weights:
        report.checks["plan"] += 1
        node = nodes.get(w.node)
        if node is None or w.input_index >= len(node.input) or node.input[w.input_index] not in view.const_dq:
            v.append(Violation("plan", w.node, f"weight {w.initializer} should be INT8 with a DequantizeLinear"))
