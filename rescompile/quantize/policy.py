"""Placement policies: which tensors get Q/DQ, with which scheme, and why — per target runtime.

``tensorrt`` follows rules R1-R8 of shared/DESIGN.md: per-channel symmetric INT8 weights;
symmetric per-tensor INT8 activations on the inputs of weighted ops; on each residual Add
the shortcut input is quantized and the main-branch input is not, so TensorRT fuses
Conv+Add(+ReLU) into one INT8 kernel; one shared Q/DQ per tensor at fan-outs; pooling and
reshapes take their input's scale. ``onnxruntime`` (policy_ort.py) places Q/DQ around every
op ONNX Runtime's CPU provider fuses into a QLinear kernel, with UINT8 asymmetric activations.

The result is a QuantPlan: every quantized tensor with its consumers and the rules that put it
there, every residual Add and how it is quantized; saved as ``qdq_plan.json``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import onnx

from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.topology import ResidualBlock, constant_tensors, find_residual_blocks
from rescompile.readers import short

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
# R7: ops whose output takes the input's scale (max, averages over a window and reshapes stay in range).
SCALE_PRESERVING_OPS = (
    "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
)  # fmt: skip

TENSORRT_RULES = {
    "R2": "weights: per-channel symmetric INT8 (axis = output channels), zero point 0; bias stays float",
    "R3": "activations: per-tensor symmetric INT8, zero point 0",
    "R4": "input of a weighted op (Conv/Gemm/MatMul); their outputs are not quantized",
    "R5": "residual Add: the shortcut input is quantized, the main-branch input is not (Conv+Add+ReLU fusion)",
    "R6": "one shared Q/DQ at a fan-out: one scale for every consumer",
    "R7": "pooling and reshapes take the scale of their input",
    "R8": "kept in higher precision (--keep-fp / --keep-first-last): no Q/DQ on its inputs, float weights",
}


class Policy(str, Enum):
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"


@dataclass
class ActivationQuant:
    """One activation tensor quantized by a single shared Q/DQ pair."""

    tensor: str
    consumers: list[str]  # "node_name:input_index" that read the dequantized tensor
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
    input_index: int = 1


@dataclass
class BiasQuant:
    """A bias stored as INT32 with scale = input scale x weight scale (ONNX Runtime's QLinear kernels)."""

    initializer: str
    node: str
    input: str  # the quantized activation whose scale multiplies the weight scale
    weight: str  # the weight initializer
    axis: int = 0
    rule: str = ""
    input_index: int = 2


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
    fused: bool  # the Add runs inside an INT8 kernel of the target runtime
    output_quantized: str | None = None  # the tensor after the Add (or its ReLU) that gets Q/DQ
    kernel: str = ""  # how the target runtime runs it
    rule: str = ""
    add_output: str = ""  # the Add's output tensor


@dataclass
class QuantPlan:
    policy: str
    activations: list[ActivationQuant] = field(default_factory=list)
    weights: list[WeightQuant] = field(default_factory=list)
    residual_adds: list[BlockPlan] = field(default_factory=list)
    kept_fp: list[str] = field(default_factory=list)
    biases: list[BiasQuant] = field(default_factory=list)
    scheme: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)

    @property
    def calibrated_tensors(self) -> list[str]:
        """Tensors whose ranges calibration must collect."""
        return sorted({a.scale_from for a in self.activations})

    def activation(self, tensor: str) -> ActivationQuant | None:
        return next((a for a in self.activations if a.tensor == tensor), None)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "rescompile.qdq_plan/2", **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> QuantPlan:
        """The inverse of :meth:`to_dict`; every record and field is type-checked (UsageError otherwise)."""
        from rescompile.readers import from_mapping

        what = "qdq_plan.json"
        if not isinstance(d, dict):
            raise UsageError(f"not a rescompile {what}: it holds a JSON {type(d).__name__}, not an object")
        records = {"activations": ActivationQuant, "weights": WeightQuant, "residual_adds": BlockPlan, "biases": BiasQuant}
        lists: dict[str, list[Any]] = {}
        for key, kind in records.items():
            items = d.get(key, [] if key == "biases" else None)
            if not isinstance(items, list):
                raise UsageError(f"not a rescompile {what}: {key!r} must be a list")
            lists[key] = [from_mapping(kind, item, f"{what} {key}[{i}]") for i, item in enumerate(items)]
        for key in ("weights", "biases"):  # indices into a node's inputs and a weight's dims: small, non-negative
            for i, rec in enumerate(lists[key]):
                if not (0 <= rec.input_index < 16 and -8 <= rec.axis < 8):
                    raise UsageError(f"{what} {key}[{i}]: input_index {rec.input_index} / axis {rec.axis} out of range")
        policy, kept = d.get("policy"), d.get("kept_fp")
        if policy not in {p.value for p in Policy}:
            raise UsageError(f"{what}: unknown policy {short(policy)}", hint="tensorrt or onnxruntime")
        if not isinstance(kept, list) or not all(isinstance(k, str) for k in kept):
            raise UsageError(f"not a rescompile {what}: 'kept_fp' must be a list of node names")
        for key in ("scheme", "rules"):
            if not isinstance(d.get(key, {}), dict):
                raise UsageError(f"not a rescompile {what}: {key!r} must be an object")
        return cls(policy, lists["activations"], lists["weights"], lists["residual_adds"], list(kept), lists["biases"],
                   dict(d.get("scheme", {})), dict(d.get("rules", {})))  # fmt: skip

    @classmethod
    def from_json(cls, text: str, source: str = "qdq_plan.json") -> QuantPlan:
        """Parse the text of a plan; ``source`` names it in messages."""
        from rescompile.readers import parse_json

        return cls.from_dict(parse_json(text, source, "rescompile qdq_plan.json"))

    @classmethod
    def read(cls, path: Any) -> QuantPlan:
        """Parse a qdq_plan.json file; missing, unreadable or malformed is a UsageError naming it."""
        from rescompile.readers import read_text

        try:
            return cls.from_json(read_text(path, "plan file"), str(path))
        except UsageError as exc:
            if str(path) in exc.message:
                raise
            raise UsageError(f"{path}: {exc.message}", hint=exc.hint) from None


def _matches(node: onnx.NodeProto, pattern: str) -> bool:
    return pattern == node.op_type or fnmatch.fnmatchcase(node_name(node), pattern)


def weighted_nodes(model: onnx.ModelProto, idx: GraphIndex | None = None) -> list[onnx.NodeProto]:
    """Conv/Gemm/MatMul nodes with an initializer weight and an activation input, in graph order."""
    idx = idx or GraphIndex.build(model.graph)
    const = constant_tensors(idx)
    return [
        n for n in model.graph.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in idx.initializers
        and n.input[0] not in const
    ]  # fmt: skip


def kept_nodes(model: onnx.ModelProto, keep_fp: tuple[str, ...], keep_first_last: bool) -> set[str]:
    """Names of the nodes the user keeps in higher precision.

    Raises:
        UsageError: a ``--keep-fp`` pattern matches no node (a typo would otherwise quantize
            the layer the user meant to keep, silently).
    """
    kept: set[str] = set()
    for p in keep_fp:
        hits = {node_name(n) for n in model.graph.node if _matches(n, p)}
        if not hits:
            ops = sorted({n.op_type for n in model.graph.node})
            raise UsageError(
                f"--keep-fp {p!r} matches no node of the model",
                hint=f"use a node-name glob (e.g. '{node_name(model.graph.node[0])}') or an op type ({', '.join(ops)})"
                if len(model.graph.node)
                else None,
            )
        kept |= hits
    weighted = weighted_nodes(model)
    if keep_first_last and weighted:
        kept |= {node_name(weighted[0]), node_name(weighted[-1])}
    return kept


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted op's weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: W is K x N


def scale_source(idx: GraphIndex, tensor: str, through: tuple[str, ...] = SCALE_PRESERVING_OPS) -> str:
    """Follow producers of op types ``through`` back to the tensor whose range sets the scale."""
    const = constant_tensors(idx)
    seen = {tensor}
    while True:
        node = idx.producer.get(tensor)
        if node is None or node.op_type not in through:
            return tensor
        nxt = node.input[0]
        if nxt in seen or nxt in const or not nxt:
            return tensor
        seen.add(nxt)
        tensor = nxt


def tensor_order(model: onnx.ModelProto) -> Callable[[str], tuple[int, str]]:
    """Sort key: position of a tensor's producer in the graph (graph inputs first)."""
    pos = {out: i for i, n in enumerate(model.graph.node) for out in n.output}
    return lambda t: (pos.get(t, -1), t)


class Requests:
    """Collects activation Q/DQ requests: one entry per tensor, consumers and rules merged."""

    def __init__(self, idx: GraphIndex, through: tuple[str, ...], symmetric: bool, dtype: str) -> None:
        self.idx, self.through, self.symmetric, self.dtype = idx, through, symmetric, dtype
        self.by_tensor: dict[str, ActivationQuant] = {}

    def add(self, tensor: str, rule: str, consumer: onnx.NodeProto | None = None, input_index: int = 0) -> None:
        q = self.by_tensor.get(tensor)
        if q is None:
            q = ActivationQuant(tensor, [], [], scale_source(self.idx, tensor, self.through), self.symmetric, self.dtype)
            self.by_tensor[tensor] = q
        if consumer is not None:
            ref = f"{node_name(consumer)}:{input_index}"
            if ref not in q.consumers:
                q.consumers.append(ref)
        if rule not in q.rules:
            q.rules.append(rule)

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.by_tensor

    def ordered(self, model: onnx.ModelProto) -> list[ActivationQuant]:
        return [self.by_tensor[t] for t in sorted(self.by_tensor, key=tensor_order(model))]


def plan_qdq(
    model: onnx.ModelProto,
    policy: Policy | str = Policy.TENSORRT,
    *,
    keep_fp: tuple[str, ...] = (),
    keep_first_last: bool = False,
) -> QuantPlan:
    """Decide Q/DQ placement for ``model`` (FP32, simplified, BatchNorm folded).

    Args:
        policy: the target runtime's placement and scheme (``tensorrt`` or ``onnxruntime``).
        keep_fp: node-name globs or op types to leave in higher precision.
        keep_first_last: keep the first and the last weighted layer in higher precision.

    Returns:
        A QuantPlan: every quantized tensor with its consumers and the rule that put it there.

    Raises:
        UsageError: an unknown policy, or a ``keep_fp`` pattern that matches no node.
    """
    try:
        policy = Policy(policy)
    except ValueError:
        raise UsageError(f"unknown policy {policy!r}", hint="tensorrt or onnxruntime") from None
    if policy is Policy.ONNXRUNTIME:
        from rescompile.quantize.policy_ort import plan_onnxruntime

        return plan_onnxruntime(model, keep_fp=keep_fp, keep_first_last=keep_first_last)
    return plan_tensorrt(model, keep_fp=keep_fp, keep_first_last=keep_first_last)


def plan_tensorrt(model: onnx.ModelProto, *, keep_fp: tuple[str, ...] = (), keep_first_last: bool = False) -> QuantPlan:
    """The ``tensorrt`` placement (rules R2-R8 of shared/DESIGN.md); see plan_qdq."""
    idx = GraphIndex.build(model.graph)
    kept = kept_nodes(model, keep_fp, keep_first_last)
    plan = QuantPlan(
        Policy.TENSORRT.value, kept_fp=sorted(kept),
        scheme={"activations": "int8, symmetric per-tensor (zero point 0)",
                "weights": "int8, symmetric per-channel (zero point 0)", "bias": "float"},
        rules=dict(TENSORRT_RULES),
    )  # fmt: skip
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
        plan.residual_adds.append(_block_plan(
            b, quantized, fused, None,
            "Conv+Add" + ("+ReLU" if b.follower else "") + " fused INT8 kernel" if fused else "not fused (kept or no Conv)",
            "R5: shortcut quantized, main branch not" if b.add not in kept else "R8: Add kept in higher precision",
        ))  # fmt: skip
    plan.activations = req.ordered(model)
    for q in plan.activations:
        if len(q.consumers) > 1:
            q.rules.append("R6: one shared Q/DQ at a fan-out")
        if q.scale_from != q.tensor:
            q.rules.append(f"R7: scale taken from {q.scale_from}, the input of a scale-preserving op")
    return plan


def _block_plan(b: ResidualBlock, quantized: list[str], fused: bool, output: str | None, kernel: str, rule: str) -> BlockPlan:
    return BlockPlan(b.add, b.main, b.main_producer, b.shortcut, b.shortcut_kind, b.follower, quantized, fused,
                     output, kernel, rule, b.output)  # fmt: skip


def parse_policy(value: str, backend: str) -> Policy:
    """``auto`` picks the policy of the backend: tensorrt for TensorRT, onnxruntime for the CPU."""
    if value == "auto":
        return Policy.TENSORRT if backend == "tensorrt" else Policy.ONNXRUNTIME
    try:
        return Policy(value)
    except ValueError:
        raise UsageError(f"unknown policy {value!r}", hint="tensorrt, onnxruntime or auto") from None
