"""Proof that an INT8 graph keeps the FP32 topology and follows its placement policy.

Checks, each violation naming the node and the rule:
- with Q/DQ pairs removed, the INT8 graph is the FP32 graph node for node, edge for edge;
- every residual Add's inputs are quantized exactly as the plan says (tensorrt: shortcut
  quantized, main branch not; no Q/DQ between the fused Conv, the Add and its ReLU);
- zero points 0 for symmetric schemes, scales finite and > 0, weight axes and lengths right;
- a tensor has at most one QuantizeLinear (one shared Q/DQ at a fan-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.topology import find_residual_blocks

_QDQ = ("QuantizeLinear", "DequantizeLinear")


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

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy, "ok": self.ok, "checked_nodes": self.checked_nodes,
            "residual_adds": self.residual_adds, "qdq_pairs": self.qdq_pairs, "weight_dq": self.weight_dq,
            "violations": [str(v) for v in self.violations],
        }  # fmt: skip


def _attrs(node: onnx.NodeProto) -> dict[str, bytes]:
    return {a.name: a.SerializeToString() for a in node.attribute}


def strip_qdq(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], dict[str, str], list[Violation]]:
    """The non-Q/DQ nodes of ``model`` and a map from each dequantized tensor to its float origin."""
    idx = GraphIndex.build(model.graph)
    origin: dict[str, str] = {}
    problems: list[Violation] = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = idx.producer.get(n.input[0])
        if src is not None and src.op_type == "QuantizeLinear":
            origin[n.output[0]] = src.input[0]
        elif n.input[0] in idx.initializers:
            name = n.input[0]
            origin[n.output[0]] = name[: -len("_quantized")] if name.endswith("_quantized") else name
        else:
            problems.append(Violation("pairs", node_name(n), "DequantizeLinear not fed by a QuantizeLinear or a weight"))
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and not all(c.op_type == "DequantizeLinear" for c, _ in idx.consumers[n.output[0]]):
            problems.append(Violation("pairs", node_name(n), "QuantizeLinear output feeds something other than a DequantizeLinear"))
    return [n for n in model.graph.node if n.op_type not in _QDQ], origin, problems


def verify_int8(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: object | None = None, policy: str | None = None) -> VerifyReport:
    """Check ``int8`` against ``fp32`` (and ``plan``, a QuantPlan, when given).

    Args:
        fp32: the simplified FP32 model the INT8 model was made from.
        int8: the Q/DQ model.
        plan: the QuantPlan used; its policy and residual-Add decisions are checked.
        policy: the policy name when no plan is given (``tensorrt`` or ``onnxruntime``).
    """
    policy = getattr(plan, "policy", None) or policy or "tensorrt"
    report = VerifyReport(policy)
    v = report.violations
    nodes, origin, problems = strip_qdq(int8)
    v.extend(problems)
    fp_nodes = list(fp32.graph.node)
    report.checked_nodes = len(fp_nodes)
    q_idx = GraphIndex.build(int8.graph)

    # 1. Topology: node for node, edge for edge.
    if len(nodes) != len(fp_nodes):
        v.append(Violation("topology", "graph", f"{len(nodes)} non-Q/DQ nodes, FP32 graph has {len(fp_nodes)}"))
    for a, b in zip(fp_nodes, nodes, strict=False):
        ins = [origin.get(i, i) for i in b.input]
        if a.op_type != b.op_type or list(a.output) != list(b.output):
            v.append(Violation("topology", node_name(b), f"expected {a.op_type} -> {list(a.output)}, found {b.op_type} -> {list(b.output)}"))
        elif ins != list(a.input):
            v.append(Violation("topology", node_name(b), f"inputs {ins} differ from FP32 {list(a.input)}"))
        elif _attrs(a) != _attrs(b):
            v.append(Violation("topology", node_name(b), "attributes differ from the FP32 node"))
    if [o.name for o in fp32.graph.output] != [o.name for o in int8.graph.output]:
        v.append(Violation("topology", "graph", "graph outputs differ"))

    # 2. Scales, zero points, weight axes; one Q per tensor.
    symmetric = policy == "tensorrt"
    quantized_by: dict[str, list[str]] = {}
    for n in int8.graph.node:
        if n.op_type not in _QDQ:
            continue
        scale = q_idx.constant_value(n.input[1])
        zp = q_idx.constant_value(n.input[2]) if len(n.input) > 2 else None
        if scale is None or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            v.append(Violation("scale", node_name(n), "scale must be a finite constant > 0"))
        is_weight = n.op_type == "DequantizeLinear" and n.input[0] in q_idx.initializers
        if zp is not None and (symmetric or is_weight) and np.any(zp != 0):
            v.append(Violation("zero-point", node_name(n), f"zero point must be 0 for a symmetric scheme, found {np.ravel(zp)[:4]}"))
        if n.op_type == "QuantizeLinear":
            quantized_by.setdefault(n.input[0], []).append(node_name(n))
            report.qdq_pairs += 1
        if is_weight:
            report.weight_dq += 1
            w = q_idx.constant_value(n.input[0])
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            consumer = next(iter(q_idx.consumers[n.output[0]]), None)
            want = 0
            if consumer is not None and consumer[0].op_type == "Gemm":
                want = 0 if next((a.i for a in consumer[0].attribute if a.name == "transB"), 0) else 1
            elif consumer is not None and consumer[0].op_type == "MatMul":
                want = 1
            if w is not None and scale is not None and np.ndim(scale) == 1:
                if axis != want or scale.shape[0] != w.shape[want]:
                    v.append(Violation("weight-axis", node_name(n), f"per-channel axis {axis} with {scale.shape[0]} scales; expected axis {want} with {w.shape[want]}"))
    for t, qs in quantized_by.items():
        if len(qs) > 1:
            v.append(Violation("fan-out", t, f"{len(qs)} QuantizeLinear nodes ({', '.join(qs)}); one shared Q/DQ expected"))

    # 3. Residual Adds: quantized as the policy says; nothing between Conv, Add and ReLU.
    blocks = find_residual_blocks(fp32)
    report.residual_adds = len(blocks)
    planned = {b.add: set(b.quantized) for b in getattr(plan, "residual_adds", [])}
    add_nodes = {node_name(n): n for n in nodes}
    for b in blocks:
        node = add_nodes.get(b.add)
        if node is None:
            v.append(Violation("residual", b.add, "residual Add missing from the INT8 graph"))
            continue
        feeds = {origin.get(i, i): (i in origin) for i in node.input}
        expected = planned.get(b.add, {b.shortcut} if policy == "tensorrt" else {b.shortcut, b.main})
        for t, is_q in feeds.items():
            role = "shortcut" if t == b.shortcut else "main-branch"
            if is_q and t not in expected:
                v.append(Violation("residual", b.add, f"{role} input {t} is quantized; the {policy} policy leaves it float"))
            if not is_q and t in expected:
                v.append(Violation("residual", b.add, f"{role} input {t} is not quantized; the {policy} policy quantizes it"))
        if policy == "tensorrt" and b.follower_node:
            relu_inputs = [n.input[0] for n in nodes if node_name(n) == b.follower_node]
            if relu_inputs and relu_inputs[0] != b.output:
                v.append(Violation("residual", b.add, "a Q/DQ sits between the Add and its ReLU; TensorRT cannot fuse"))
    return report
