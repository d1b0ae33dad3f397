"""What every placement policy shares: the QuantPlan it returns and op-level helpers.

A QuantPlan lists every quantized tensor with its consumers and the rules that put it there, and
every residual Add and how it is quantized; saved as ``qdq_plan.json``. The policies themselves
(``tensorrt`` in policy_trt.py, ``onnxruntime`` in policy_ort.py) are found by name in
registry.py, which also holds ``plan_qdq`` (plan with the policy of a given name); their rule codes
are defined in docs/placement-rules.md.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from rescompile.buildfolder import QDQ_PLAN
from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import CONTROL_FLOW_OPS, SCALE_PRESERVING_OPS, STANDARD_DOMAINS, WEIGHTED_OPS
from rescompile.graph.topology import ResidualBlock, constant_tensors
from rescompile.quantize.catalog import policy_names
from rescompile.readers import short

WEIGHT_BITS = 8  # the full symmetric INT8 range [-127, 127]; a WeightQuant may use fewer bits


class Policy:
    """Names of the built-in policies, for code that spells them (the registry knows every policy)."""

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
    """A weight initializer stored as INT8 with a per-channel DequantizeLinear.

    ``bits``: the symmetric integer range it uses, ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (8: [-127, 127];
    7: [-63, 63], the ``onnxruntime`` policy's O7). Left out of qdq_plan.json when 8, so plans that use
    the full range read and write as before.
    """

    initializer: str
    node: str
    op: str
    axis: int
    rule: str = "R2: weights per-channel symmetric INT8"
    input_index: int = 1
    bits: int = 8


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
        d = {"schema": "rescompile.qdq_plan/2", **asdict(self)}
        for w in d["weights"]:
            if w["bits"] == WEIGHT_BITS:
                del w["bits"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> QuantPlan:
        """The inverse of :meth:`to_dict`; every record and field is type-checked (UsageError otherwise)."""
        from rescompile.readers import from_mapping

        what = QDQ_PLAN
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
        for i, rec in enumerate(lists["weights"]):
            if not (2 <= rec.bits <= WEIGHT_BITS):
                raise UsageError(f"{what} weights[{i}]: bits {rec.bits} out of range (2..{WEIGHT_BITS})")
        policy, kept = d.get("policy"), d.get("kept_fp")
        if policy not in policy_names():
            raise UsageError(f"{what}: unknown policy {short(policy)}", hint=", ".join(policy_names()))
        if not isinstance(kept, list) or not all(isinstance(k, str) for k in kept):
            raise UsageError(f"not a rescompile {what}: 'kept_fp' must be a list of node names")
        for key in ("scheme", "rules"):
            if not isinstance(d.get(key, {}), dict):
                raise UsageError(f"not a rescompile {what}: {key!r} must be an object")
        return cls(
            policy,
            lists["activations"],
            lists["weights"],
            lists["residual_adds"],
            list(kept),
            lists["biases"],
            dict(d.get("scheme", {})),
            dict(d.get("rules", {})),
        )

    @classmethod
    def from_json(cls, text: str, source: str = QDQ_PLAN) -> QuantPlan:
        """Parse the text of a plan; ``source`` names it in messages."""
        from rescompile.readers import parse_json

        return cls.from_dict(parse_json(text, source, "rescompile qdq_plan.json"))

    @classmethod
    def read(cls, path: Any) -> QuantPlan:
        """Parse a qdq_plan.json file; missing, unreadable or malformed is a UsageError naming it."""
        from rescompile.readers import parse_text_file

        return parse_text_file(path, "plan file", lambda text: cls.from_json(text, str(path)))


def _matches(node: onnx.NodeProto, pattern: str) -> bool:
    return pattern == node.op_type or fnmatch.fnmatchcase(node_name(node), pattern)


def weighted_nodes(model: onnx.ModelProto, idx: GraphIndex | None = None) -> list[onnx.NodeProto]:
    """Conv/Gemm/MatMul nodes with an initializer weight and an activation input, in graph order."""
    idx = idx or GraphIndex.build(model.graph)
    const = constant_tensors(idx)
    return [
        n
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in idx.initializers and n.input[0] not in const
    ]


def check_supported(model: onnx.ModelProto) -> None:
    """Refuse graphs placement cannot reason about (rule G1), naming the first such node and its op.

    Raises:
        UsageError: a control-flow node (If/Loop/Scan: its subgraphs would stay unseen) or an op
            outside the standard ONNX domain (its inputs and fusions are unknown).
    """
    for n in model.graph.node:
        if n.op_type in CONTROL_FLOW_OPS:
            raise UsageError(
                f"node {node_name(n)!r} is a {n.op_type}: rescompile does not quantize control flow (G1)",
                hint="export the model without data-dependent control flow (trace it with a fixed input)",
            )
        if n.domain not in STANDARD_DOMAINS:
            raise UsageError(
                f"node {node_name(n)!r} is {n.domain}.{n.op_type}, not a standard ONNX op: rescompile cannot place Q/DQ around it (G1)",
                hint="export the plain FP32 model, before any runtime-specific optimization",
            )


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


def block_plan(b: ResidualBlock, quantized: list[str], fused: bool, output: str | None, kernel: str, rule: str) -> BlockPlan:
    return BlockPlan(
        b.add, b.main, b.main_producer, b.shortcut, b.shortcut_kind, b.follower, quantized, fused, output, kernel, rule, b.output
    )
