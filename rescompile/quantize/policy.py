"""Placement policies: which tensors get Q/DQ, with which scheme, and why — per target runtime.

``tensorrt`` follows the rules of shared/DESIGN.md: per-channel symmetric INT8 weights;
symmetric per-tensor INT8 activations on the inputs of weighted ops; on each residual Add
the shortcut input is quantized and the main-branch input is not, so TensorRT fuses
Conv+Add(+ReLU) into one INT8 kernel; one shared Q/DQ per tensor at fan-outs; ops that
commute with quantization (MaxPool, Flatten, Reshape) pass their input's scale through.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import onnx

from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.topology import ResidualBlock, find_residual_blocks

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
# Ops whose output may reuse the input's scale exactly (max and reshapes commute with Q/DQ).
SCALE_PRESERVING_OPS = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


class Policy(str, Enum):
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"


@dataclass
class ActivationQuant:
    """One activation tensor quantized by a single shared Q/DQ pair."""

    tensor: str
    consumers: list[str]  # "node_name:input_index"
    rules: list[str]
    scale_from: str  # tensor whose calibrated range sets the scale
    symmetric: bool = True
    dtype: str = "int8"


@dataclass
class WeightQuant:
    """A weight initializer stored as INT8 with a per-channel DequantizeLinear."""

    initializer: str
    node: str
    op: str
    axis: int
    rule: str = "R2: weights per-channel symmetric INT8"


@dataclass
class BlockPlan:
    """How one residual Add is quantized."""

    add: str
    main: str
    main_producer: str
    shortcut: str
    shortcut_kind: str
    follower: str | None
    quantized: list[str]  # which of the Add's inputs get Q/DQ
    fused: bool  # main branch left free for Conv+Add(+ReLU) fusion


@dataclass
class QuantPlan:
    policy: str
    activations: list[ActivationQuant] = field(default_factory=list)
    weights: list[WeightQuant] = field(default_factory=list)
    residual_adds: list[BlockPlan] = field(default_factory=list)
    kept_fp: list[str] = field(default_factory=list)

    @property
    def calibrated_tensors(self) -> list[str]:
        """Tensors whose ranges calibration must collect."""
        return sorted({a.scale_from for a in self.activations})

    def activation(self, tensor: str) -> ActivationQuant | None:
        return next((a for a in self.activations if a.tensor == tensor), None)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "rescompile.qdq_plan/1", **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantPlan:
        return cls(
            d["policy"],
            [ActivationQuant(**a) for a in d["activations"]],
            [WeightQuant(**w) for w in d["weights"]],
            [BlockPlan(**b) for b in d["residual_adds"]],
            list(d["kept_fp"]),
        )


def _matches(node: onnx.NodeProto, patterns: tuple[str, ...]) -> bool:
    name = node_name(node)
    return any(p == node.op_type or fnmatch.fnmatchcase(name, p) for p in patterns)


def _weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted op's weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: W is K x N


def _scale_source(idx: GraphIndex, tensor: str) -> str:
    """Follow scale-preserving producers back to the tensor whose range sets the scale."""
    seen = {tensor}
    while True:
        node = idx.producer.get(tensor)
        if node is None or node.op_type not in SCALE_PRESERVING_OPS:
            return tensor
        nxt = node.input[0]
        if nxt in seen or not idx.is_activation(nxt):
            return tensor
        seen.add(nxt)
        tensor = nxt


def plan_qdq(
    model: onnx.ModelProto,
    policy: Policy | str = Policy.TENSORRT,
    *,
    keep_fp: tuple[str, ...] = (),
    keep_first_last: bool = False,
) -> QuantPlan:
    """Decide Q/DQ placement for ``model`` (FP32, simplified, BatchNorm folded).

    Args:
        policy: the target runtime's placement and scheme.
        keep_fp: node-name globs or op types to leave in higher precision (no Q/DQ on their inputs).
        keep_first_last: keep the first and the last weighted layer in higher precision.

    Returns:
        A QuantPlan: every quantized tensor with its consumers and the rule that put it there.
    """
    policy = Policy(policy)
    if policy is Policy.ONNXRUNTIME:
        from rescompile.quantize.policy_ort import plan_onnxruntime

        return plan_onnxruntime(model, keep_fp=keep_fp, keep_first_last=keep_first_last)
    idx = GraphIndex.build(model.graph)
    weighted = [
        n for n in model.graph.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in idx.initializers
        and idx.is_activation(n.input[0])
    ]  # fmt: skip
    kept = {node_name(n) for n in model.graph.node if _matches(n, keep_fp)}
    if keep_first_last and weighted:
        kept |= {node_name(weighted[0]), node_name(weighted[-1])}
    plan = QuantPlan(policy.value, kept_fp=sorted(kept))
    requests: dict[str, ActivationQuant] = {}

    def request(tensor: str, consumer: onnx.NodeProto, input_index: int, rule: str) -> None:
        q = requests.get(tensor)
        if q is None:
            q = requests[tensor] = ActivationQuant(tensor, [], [], _scale_source(idx, tensor))
        q.consumers.append(f"{node_name(consumer)}:{input_index}")
        if rule not in q.rules:
            q.rules.append(rule)

    for node in weighted:
        if node_name(node) in kept:
            continue
        request(node.input[0], node, 0, "R4: input of weighted op")
        plan.weights.append(WeightQuant(node.input[1], node_name(node), node.op_type, _weight_axis(node)))

    blocks = find_residual_blocks(model)
    by_add = {node_name(n): n for n in model.graph.node}
    for b in blocks:
        add = by_add[b.add]
        quantized: list[str] = []
        if b.add not in kept:
            request(b.shortcut, add, list(add.input).index(b.shortcut), "R5: residual shortcut input")
            quantized.append(b.shortcut)
        plan.residual_adds.append(_block_plan(b, quantized, fused=b.main_producer_op == "Conv"))
    plan.activations = [requests[t] for t in sorted(requests, key=_order(model))]
    for q in plan.activations:
        if len(q.consumers) > 1:
            q.rules.append("R6: one shared Q/DQ at a fan-out")
        if q.scale_from != q.tensor:
            q.rules.append("R7: scale taken from the input of a scale-preserving op")
    return plan


def _block_plan(b: ResidualBlock, quantized: list[str], fused: bool) -> BlockPlan:
    return BlockPlan(b.add, b.main, b.main_producer, b.shortcut, b.shortcut_kind, b.follower, quantized, fused)


def _order(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    """Sort key: position of a tensor's producer in the graph (graph inputs first)."""
    pos = {out: i for i, n in enumerate(model.graph.node) for out in n.output}
    return lambda t: (pos.get(t, -1), t)


def parse_policy(value: str, backend: str) -> Policy:
    """``auto`` picks the policy of the backend: tensorrt for TensorRT, onnxruntime for the CPU."""
    if value == "auto":
        return Policy.TENSORRT if backend == "tensorrt" else Policy.ONNXRUNTIME
    try:
        return Policy(value)
    except ValueError:
        raise UsageError(f"unknown policy {value!r}", hint="tensorrt, onnxruntime or auto") from None
