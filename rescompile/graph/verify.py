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
which outputs of weighted ops are quantized — with the helpers below; their rule codes are
defined in docs/placement-rules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import QDQ_OPS, SAME_SCALE_OPS, WEIGHTED_OPS, weight_axis
from rescompile.graph.topology import ResidualBlock, find_residual_blocks

RULES = {
    "pairs": "Q/DQ come in pairs with one scale and zero point; DQ of weights read quantized initializers",
    "topology": "without Q/DQ, the INT8 graph is the FP32 graph node for node and edge for edge",
    "weight-values": "dequantized weights and biases equal the FP32 ones within half a quantization step",
    "scale": "scales are finite constants > 0; same-scale ops keep their input's scale",
    "zero-point": "zero points as the scheme says (0 for symmetric INT8, weights, and after a ReLU)",
    "dtype": "quantized types as the scheme says (activations INT8 or UINT8, weights INT8, biases INT32)",
    "weight-axis": "per-channel weight scales on the output-channel axis, one per channel",
    "fan-out": "one QuantizeLinear (one scale) per tensor at a fan-out",
    "residual": "residual Add inputs/outputs quantized as the policy says; nothing between Add and ReLU",
    "fusion": "weighted ops quantized so the runtime fuses them; kept layers have float weights",
    "plan": "the graph quantizes exactly the tensors of qdq_plan.json",
}


@dataclass
class Violation:
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass
class VerifyReport:
    policy: str
    violations: list[Violation] = field(default_factory=list)
    checked_nodes: int = 0
    residual_adds: int = 0
    qdq_pairs: int = 0
    weight_dq: int = 0
    bias_dq: int = 0
    checks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))  # rule -> items checked

    @property
    def ok(self) -> bool:
        return not self.violations

    def failed(self, rule: str) -> list[Violation]:
        return [v for v in self.violations if v.rule == rule]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "ok": self.ok, "checked_nodes": self.checked_nodes,
            "residual_adds": self.residual_adds, "qdq_pairs": self.qdq_pairs, "weight_dq": self.weight_dq,
            "bias_dq": self.bias_dq,
            "rules": {r: {"checked": n, "violations": len(self.failed(r)), "what": RULES[r]} for r, n in self.checks.items()},
            "violations": [str(v) for v in self.violations],
        }  # fmt: skip


def _attrs(node: onnx.NodeProto) -> dict[str, bytes]:
    return {a.name: a.SerializeToString() for a in node.attribute}


def _attr_i(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _dtype(idx: GraphIndex, name: str) -> int | None:
    if name in idx.initializers:
        return int(idx.initializers[name].data_type)
    node = idx.producer.get(name)
    if node is not None and node.op_type == "Constant":
        return next((int(a.t.data_type) for a in node.attribute if a.name == "value"), None)
    return None


class QdqView:
    """The Q/DQ structure of an INT8 graph: what each dequantized tensor stands for."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.idx = GraphIndex.build(model.graph)
        self.act_dq: dict[str, onnx.NodeProto] = {}  # DQ output -> DQ node, for activations
        self.const_dq: dict[str, onnx.NodeProto] = {}  # DQ output -> DQ node, for weights and biases
        self.q_of: dict[str, list[onnx.NodeProto]] = {}  # float tensor -> its QuantizeLinear nodes
        self.broken: list[Violation] = []
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear":
                self.q_of.setdefault(n.input[0], []).append(n)
                bad = [c for c, _ in self.idx.consumers.get(n.output[0], []) if c.op_type != "DequantizeLinear"]
                if bad:
                    self.broken.append(Violation("pairs", node_name(n), f"QuantizeLinear output feeds {node_name(bad[0])} "
                                                 f"({bad[0].op_type}), not a DequantizeLinear"))  # fmt: skip
            elif n.op_type == "DequantizeLinear":
                src = self.idx.producer.get(n.input[0])
                if src is not None and src.op_type == "QuantizeLinear":
                    self.act_dq[n.output[0]] = n
                    if list(src.input[1:]) != list(n.input[1:]) and not self._same_params(src, n):
                        self.broken.append(Violation("pairs", node_name(n), f"scale/zero point differ from its "
                                                     f"QuantizeLinear {node_name(src)}"))  # fmt: skip
                elif self.idx.is_constant(n.input[0]):
                    self.const_dq[n.output[0]] = n
                else:
                    self.broken.append(Violation("pairs", node_name(n), "DequantizeLinear not fed by a QuantizeLinear or a weight"))

    def _same_params(self, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
        va = [self.idx.constant_value(x) for x in a.input[1:3]]
        vb = [self.idx.constant_value(x) for x in b.input[1:3]]
        return len(va) == len(vb) and all(x is not None and y is not None and np.array_equal(x, y) for x, y in zip(va, vb, strict=True))

    def origin(self, tensor: str) -> str:
        """The float tensor a dequantized activation stands for (itself if not dequantized)."""
        seen = set()
        while tensor in self.act_dq and tensor not in seen:
            seen.add(tensor)
            q = self.idx.producer[self.act_dq[tensor].input[0]]
            tensor = q.input[0]
        return tensor

    def qparams(self, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
        """Scale, zero point (None if absent) and zero-point element type of a Q or DQ node."""
        scale = self.idx.constant_value(node.input[1])
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp = self.idx.constant_value(zp_name) if zp_name else None
        return scale, zp, _dtype(self.idx, zp_name) if zp_name else None

    def act_qparams(self, tensor: str) -> tuple[np.ndarray | None, np.ndarray | None, int | None] | None:
        """Scale/zero point of the activation DQ that produces ``tensor``, if it is one."""
        n = self.act_dq.get(tensor)
        return self.qparams(n) if n is not None else None


def detect_policy(int8: onnx.ModelProto) -> str:
    """The first registered policy (the default last) whose ``detect`` recognises the graph's Q/DQ."""
    from rescompile.quantize.registry import DEFAULT_POLICY, all_policies

    view = QdqView(int8)
    return next((p.name for p in all_policies() if p.name != DEFAULT_POLICY and p.detect(view)), DEFAULT_POLICY)


def _dequantize(view: QdqView, dq: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """Dequantized value of a constant DQ and its per-element half step (for value comparisons)."""
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
    s = np.reshape(scale, shape if np.ndim(scale) else ()).astype(np.float64)
    z = np.reshape(zp, shape if np.ndim(zp) else ()).astype(np.float64)
    return (q.astype(np.float64) - z) * s, np.broadcast_to(s / 2, q.shape)


def verify_int8(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: Any | None = None, policy: str | None = None) -> VerifyReport:
    """Check ``int8`` against ``fp32`` under a policy (and ``plan``, a QuantPlan, when given).

    Args:
        fp32: the simplified FP32 model the INT8 model was made from.
        int8: the Q/DQ model.
        plan: the QuantPlan used: its policy, kept layers and quantized tensors are checked too.
        policy: a registered policy name when no plan is given (default: detected from the
            Q/DQ, e.g. UINT8 activations meaning onnxruntime).

    Returns:
        A VerifyReport; ``ok`` is False when any rule is violated.
    """
    from rescompile.errors import UsageError
    from rescompile.quantize.registry import get_policy

    name = getattr(plan, "policy", None) or policy or detect_policy(int8)
    kept = set(getattr(plan, "kept_fp", []) or [])
    report = VerifyReport(name)
    try:
        placement = get_policy(name)
    except UsageError:
        report.violations.append(Violation("plan", "graph", f"unknown policy {name!r}"))
        return report
    view = QdqView(int8)
    report.violations.extend(view.broken)
    report.checks["pairs"] = sum(n.op_type in QDQ_OPS for n in int8.graph.node)
    _check_topology(fp32, int8, view, report)
    _check_scheme(int8, view, report)
    report.residual_adds = len(find_residual_blocks(fp32))
    placement.check(fp32, view, report, kept)
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
        elif np.any(np.abs(got[0] - want.astype(np.float64)) > got[1] * (1 + 1e-4) + 1e-7):
            err = float(np.max(np.abs(got[0] - want)))
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


def _consumer_role(view: QdqView, dq_out: str) -> tuple[onnx.NodeProto, int] | None:
    cons = view.idx.consumers.get(dq_out, [])
    return cons[0] if cons else None


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
            v.append(Violation("fan-out", t, f"{len(qs)} QuantizeLinear nodes ({', '.join(node_name(q) for q in qs)}); "
                               "one shared Q/DQ expected"))  # fmt: skip


def activation_quantizers(view: QdqView) -> list[tuple[onnx.NodeProto, np.ndarray | None, np.ndarray | None, int | None]]:
    """Every activation QuantizeLinear with its scale, zero point and zero-point type (for policy checks)."""
    return [(q, *view.qparams(q)) for qs in view.q_of.values() for q in qs]


def bias_dequantizers(view: QdqView) -> list[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray, np.ndarray | None]]:
    """Every DequantizeLinear feeding a weighted op's bias: (DQ, the weighted op, stored values, scale)."""
    out = []
    for dq_out, n in view.const_dq.items():
        role = _consumer_role(view, dq_out)
        q = view.idx.constant_value(n.input[0])
        if role is not None and q is not None and role[0].op_type in WEIGHTED_OPS and role[1] == 2:
            out.append((n, role[0], q, view.qparams(n)[0]))
    return out


def check_same_scale(view: QdqView, report: VerifyReport, rule: str) -> None:
    """Same-scale ops (max pooling, reshapes): a quantized input and output share one scale and zero point."""
    for n in view.idx.graph.node:
        if n.op_type not in SAME_SCALE_OPS:
            continue
        qin = view.act_qparams(n.input[0])
        qout = view.q_of.get(n.output[0])
        if qin is None or not qout:
            continue
        report.checks["scale"] += 1
        sout, zout, _ = view.qparams(qout[0])
        same = all(a is not None and b is not None and np.array_equal(a, b) for a, b in ((qin[0], sout), (qin[1], zout)))
        if not same:
            report.violations.append(Violation("scale", node_name(n), f"{n.op_type} output scale differs from its input's ({rule})"))


def _check_weight_dq(view: QdqView, report: VerifyReport, n: onnx.NodeProto, scale: np.ndarray | None,
                     zp: np.ndarray | None) -> None:  # fmt: skip
    """Weights and biases: zero point 0 (both policies); weights INT8, per channel on the output-channel axis."""
    v, c = report.violations, report.checks
    role = _consumer_role(view, n.output[0])
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
        v.append(Violation("weight-axis", node_name(n), f"weight of {node_name(consumer)}: {got}; expected per-channel "
                           f"axis {want} with {q.shape[want]} scales"))  # fmt: skip


@dataclass
class ResidualView:
    """One residual Add of the FP32 graph as found in the INT8 graph (for the policies' residual checks)."""

    block: ResidualBlock
    add: onnx.NodeProto
    quantized: set[str]  # FP32 tensors the Add reads through a Q/DQ
    follower: onnx.NodeProto | None  # its ReLU, unless kept in FP


def residual_views(fp32: onnx.ModelProto, view: QdqView, report: VerifyReport, kept: set[str]) -> list[ResidualView]:
    """Residual Adds not kept in FP; reports (generic ``residual``) a missing Add or a Q/DQ between Add and ReLU."""
    v = report.violations
    nodes = {node_name(n): n for n in view.idx.graph.node if n.op_type not in QDQ_OPS}
    out = []
    for b in find_residual_blocks(fp32):
        report.checks["residual"] += 1
        add = nodes.get(b.add)
        if add is None:
            v.append(Violation("residual", b.add, "residual Add missing from the INT8 graph"))
            continue
        follower = nodes.get(b.follower_node) if b.follower_node and b.follower_node not in kept else None
        if follower is not None and follower.input[0] != b.output:
            v.append(Violation("residual", b.add, f"a Q/DQ sits between the Add and its ReLU {b.follower_node}; "
                               "the runtime cannot fuse them"))  # fmt: skip
        if b.add not in kept:
            out.append(ResidualView(b, add, {view.origin(i) for i in add.input if i in view.act_dq}, follower))
    return out


def quantized_weighted_ops(view: QdqView, report: VerifyReport, kept: set[str]) -> list[onnx.NodeProto]:
    """Weighted ops with a quantized weight, not kept in FP; reports (R8) a kept op whose weight is quantized."""
    out = []
    for n in view.idx.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2:
            continue
        weight_q = n.input[1] in view.const_dq
        if node_name(n) in kept:
            report.checks["fusion"] += 1
            if weight_q:
                report.violations.append(Violation("fusion", node_name(n), "kept in higher precision, but its weight is quantized (R8)"))
        elif weight_q:  # else not a weighted layer of this graph (activation x activation MatMul)
            report.checks["fusion"] += 1
            out.append(n)
    return out


def _check_plan(plan: Any, view: QdqView, report: VerifyReport) -> None:
    v = report.violations
    planned = {a.tensor: a for a in plan.activations}
    for t, a in planned.items():
        report.checks["plan"] += 1
        qs = view.q_of.get(t)
        if not qs:
            v.append(Violation("plan", t, "planned Q/DQ is missing"))
            continue
        dq_outs = {c.output[0] for c, _ in view.idx.consumers.get(qs[0].output[0], [])}
        for ref in a.consumers:
            name, _, i = ref.rpartition(":")
            node = next((n for n in view.idx.graph.node if node_name(n) == name), None)
            if node is None or int(i) >= len(node.input) or node.input[int(i)] not in dq_outs:
                v.append(Violation("plan", name, f"input {i} should read the Q/DQ of {t}"))
    for t in view.q_of:
        if t not in planned:
            report.checks["plan"] += 1
            v.append(Violation("plan", t, "quantized, but the plan does not quantize it"))
    for w in plan.weights:
        report.checks["plan"] += 1
        node = next((n for n in view.idx.graph.node if node_name(n) == w.node), None)
        if node is None or w.input_index >= len(node.input) or node.input[w.input_index] not in view.const_dq:
            v.append(Violation("plan", w.node, f"weight {w.initializer} should be INT8 with a DequantizeLinear"))
