"""The Q/DQ structure of an INT8 graph, and the pieces every proof of it shares.

``QdqView`` says what each dequantized tensor stands for; ``Violation`` and ``VerifyReport`` are
what a proof writes (one rule name per check, :data:`RULES`). The helpers below are what each
placement policy's own ``check`` uses (rescompile/quantize/policy_trt.py, policy_ort.py); the
generic proof (``prove_int8``) is in ``graph/verify.py``, its entry point by policy name
(``verify_int8``) in ``quantize/verify.py``. Nothing here knows a
policy, so the policies import it without importing the proof.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import QDQ_OPS, SAME_SCALE_OPS, WEIGHTED_OPS
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
            "policy": self.policy,
            "ok": self.ok,
            "checked_nodes": self.checked_nodes,
            "residual_adds": self.residual_adds,
            "qdq_pairs": self.qdq_pairs,
            "weight_dq": self.weight_dq,
            "bias_dq": self.bias_dq,
            "rules": {r: {"checked": n, "violations": len(self.failed(r)), "what": RULES[r]} for r, n in self.checks.items()},
            "violations": [str(v) for v in self.violations],
        }


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
                    self.broken.append(
                        Violation(
                            "pairs",
                            node_name(n),
                            f"QuantizeLinear output feeds {node_name(bad[0])} ({bad[0].op_type}), not a DequantizeLinear",
                        )
                    )
            elif n.op_type == "DequantizeLinear":
                src = self.idx.producer.get(n.input[0])
                if src is not None and src.op_type == "QuantizeLinear":
                    self.act_dq[n.output[0]] = n
                    if list(src.input[1:]) != list(n.input[1:]) and not self._same_params(src, n):
                        self.broken.append(
                            Violation("pairs", node_name(n), f"scale/zero point differ from its QuantizeLinear {node_name(src)}")
                        )
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


def consumer_role(view: QdqView, dq_out: str) -> tuple[onnx.NodeProto, int] | None:
    cons = view.idx.consumers.get(dq_out, [])
    return cons[0] if cons else None


def activation_quantizers(view: QdqView) -> list[tuple[onnx.NodeProto, np.ndarray | None, np.ndarray | None, int | None]]:
    """Every activation QuantizeLinear with its scale, zero point and zero-point type (for policy checks)."""
    return [(q, *view.qparams(q)) for qs in view.q_of.values() for q in qs]


def bias_dequantizers(view: QdqView) -> list[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray, np.ndarray | None]]:
    """Every DequantizeLinear feeding a weighted op's bias: (DQ, the weighted op, stored values, scale)."""
    out = []
    for dq_out, n in view.const_dq.items():
        role = consumer_role(view, dq_out)
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
            v.append(
                Violation("residual", b.add, f"a Q/DQ sits between the Add and its ReLU {b.follower_node}; the runtime cannot fuse them")
            )
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
