"""The residual blocks of an INT8 build as plain records, for the block picture of report.html.

Pure functions over the INT8 Q/DQ model, its ``qdq_plan.json`` (as a dict) and, on a GPU build,
the engine's layer information: for every residual Add of the plan, the ops of its main branch
and of its shortcut, each edge's Q/DQ (with the plan's rules: *why* it is there), the weights'
quantization, the layers kept in floating point (and why: ``--keep-fp``, ``--keep-first-last``,
the auto fallback), what the target runtime fuses (TensorRT's Conv+Add+ReLU, ONNX Runtime's
QLinear kernels) and the engine layer each Add ended up in.

The graph is read with its Q/DQ pairs taken out (every dequantized tensor stands for the float
tensor it came from), so block discovery is ``graph/topology.py``'s, on the same names as the plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from rescompile.engine.layerinfo import check_residual_fusion
from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name
from rescompile.graph.ops import QDQ_OPS, WEIGHTED_OPS
from rescompile.graph.topology import ResidualBlock, find_residual_blocks
from rescompile.quantize.policy import kept_nodes
from rescompile.quantize.policy_ort import KERNELS

# Why a layer was kept in floating point (rule R8); several can hold for one layer.
KEEP_REASONS = ("keep-fp", "keep-first-last", "auto-fallback")
# What a build stage changed in a layer, by the report section that lists it (``convs``, ``affines``); docs/report.md.
CHANGE_MARKS = {"EQ": "equalize", "BC": "bias_correction"}
_CODE = re.compile(r"^([A-Z]\d+)\b")


@dataclass(frozen=True)
class Mark:
    """One Q/DQ pair on an edge: the quantized tensor, and the plan's reasons for it."""

    tensor: str
    rules: tuple[str, ...]  # the plan's rule texts, e.g. "R5: residual shortcut input"
    dtype: str = ""  # "int8" | "uint8"
    consumers: int = 1  # how many node inputs read this one Q/DQ (a fan-out shares it: R6/O6)

    @property
    def codes(self) -> tuple[str, ...]:
        """The rule codes (``R5``, ``O4``...), in the plan's order, without repeats."""
        out: list[str] = []
        for r in self.rules:
            m = _CODE.match(r)
            if m and m.group(1) not in out:
                out.append(m.group(1))
        return tuple(out)


@dataclass(frozen=True)
class Op:
    """One node on a branch, with the Q/DQ on the edge that enters it along the branch."""

    node: str
    op: str
    detail: str = ""  # "3x3/2" for a 3x3 stride-2 Conv
    weight_rule: str | None = None  # the plan's rule for its quantized weight (R2/O7); None: float weight
    kept: str | None = None  # why it stays in floating point ("keep-fp", "auto-fallback"...); None: not kept
    qdq_in: Mark | None = None  # Q/DQ on the edge into this op along the branch; None: a float edge
    changes: tuple[str, ...] = ()  # marks of CHANGE_MARKS: what a stage changed in it ("EQ", "BC")

    @property
    def precision(self) -> str:
        """``fp`` (kept in floating point), ``int8`` (quantized weight) or ``float`` (an op without weights)."""
        if self.kept:
            return "fp"
        return "int8" if self.weight_rule else "float"


@dataclass(frozen=True)
class Fusion:
    """Nodes the target runtime runs as one kernel."""

    nodes: tuple[str, ...]
    kernel: str


@dataclass(frozen=True)
class EngineLayer:
    """The TensorRT engine layer a residual Add ended up in (from the engine's layer information)."""

    name: str | None
    status: str  # layerinfo statuses: "fused-int8", "fused-float", "unfused", "not-found", "unknown", "dla-..."
    layer_type: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Block:
    """One residual Add: its two branches, every Q/DQ on them, what fuses, what stays in FP."""

    add: str
    label: str  # short name for the picture ("layer1.0")
    block_input: str
    main: tuple[Op, ...]  # block input -> ... -> the op feeding the Add
    main_into_add: Mark | None  # Q/DQ on the main-branch edge into the Add
    shortcut_kind: str  # "identity" | "projection" | "pooled-projection" | "other"
    shortcut: tuple[Op, ...]  # empty for an identity shortcut
    shortcut_into_add: Mark | None  # Q/DQ on the shortcut edge into the Add
    add_kept: str | None
    follower: Op | None  # the ReLU after the Add
    output_mark: Mark | None  # Q/DQ on the block's output (after its ReLU)
    fused: bool  # the plan's verdict: the Add runs inside an INT8 kernel
    kernel: str  # the plan's words for it ("Conv+Add+ReLU fused INT8 kernel", "QLinearAdd ...")
    rule: str  # the plan's rule for the Add's inputs
    fusions: tuple[Fusion, ...] = ()
    engine: EngineLayer | None = None

    def marks(self) -> list[tuple[str, Mark]]:
        """Every Q/DQ of the block with where it sits: ``main:<node>``, ``shortcut:<node>``, ``main->add``,
        ``shortcut->add`` or ``output`` (the block input's Q/DQ is on the first edge of each branch)."""
        edges = [(f"main:{o.node}", o.qdq_in) for o in self.main] + [(f"shortcut:{o.node}", o.qdq_in) for o in self.shortcut]
        edges += [("main->add", self.main_into_add), ("shortcut->add", self.shortcut_into_add), ("output", self.output_mark)]
        return [(where, m) for where, m in edges if m is not None]


@dataclass(frozen=True)
class BlockPicture:
    """Everything the block picture draws."""

    policy: str
    blocks: tuple[Block, ...]
    rules: dict[str, str] = field(default_factory=dict)  # rule code -> meaning (the plan's ``rules``)
    kept_outside: tuple[tuple[str, str, str], ...] = ()  # (node, op, reason) kept in FP outside every block
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> CHANGE_MARKS of the whole model


class _Graph:
    """The INT8 graph and its float view (Q/DQ pairs taken out), indexed once."""

    def __init__(self, int8: onnx.ModelProto) -> None:
        self.idx = GraphIndex.build(int8.graph)
        self.origin: dict[str, str] = {}  # DQ output -> the float tensor (or weight) it stands for
        for n in int8.graph.node:
            if n.op_type == "DequantizeLinear":
                src = self.idx.producer.get(n.input[0])
                self.origin[n.output[0]] = src.input[0] if src is not None and src.op_type == "QuantizeLinear" else n.input[0]
        self.nodes = {node_name(n): n for n in int8.graph.node if n.op_type not in QDQ_OPS}
        self.float_view = self._float_view(int8)

    def resolve(self, tensor: str) -> str:
        seen = set()
        while tensor in self.origin and tensor not in seen:
            seen.add(tensor)
            tensor = self.origin[tensor]
        return tensor

    def _float_view(self, int8: onnx.ModelProto) -> onnx.ModelProto:
        """Only names and edges: nodes with inputs resolved, initializers as name-only stubs."""
        g = onnx.GraphProto(name=int8.graph.name)
        for n in int8.graph.node:
            if n.op_type in QDQ_OPS:
                continue
            c = g.node.add()
            c.CopyFrom(n)
            c.name = node_name(n)
            del c.input[:]
            c.input.extend(self.resolve(i) if i else i for i in n.input)
        g.initializer.extend(onnx.TensorProto(name=t.name) for t in int8.graph.initializer)
        g.input.extend(int8.graph.input)
        g.output.extend(int8.graph.output)
        return onnx.helper.make_model(g)

    def quantized_edge(self, node: str, tensor: str) -> str | None:
        """The quantized tensor when ``node`` reads ``tensor`` through a Q/DQ pair, else None."""
        n = self.nodes.get(node)
        if n is None:
            return None
        for i in n.input:
            if i in self.origin and self.resolve(i) == tensor and self.idx.producer.get(i) is not None:
                dq = self.idx.producer[i]
                q = self.idx.producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    return str(q.input[0])
        return None

    def output_quantized(self, tensor: str) -> bool:
        return any(c.op_type == "QuantizeLinear" for c, _ in self.idx.consumers.get(tensor, []))

    def dq_readers(self, tensor: str) -> int:
        """Node inputs (other than Q/DQ) reading the dequantized copy of ``tensor``."""
        count = 0
        for q, _ in self.idx.consumers.get(tensor, []):
            if q.op_type != "QuantizeLinear":
                continue
            for dq, _ in self.idx.consumers.get(q.output[0], []):
                count += sum(1 for c, _ in self.idx.consumers.get(dq.output[0], []) if c.op_type not in QDQ_OPS)
        return count


def _detail(node: onnx.NodeProto | None) -> str:
    """Kernel size, stride and groups of a Conv or pool: ``3x3``, ``1x1/2``, ``3x3 g32``."""
    if node is None:
        return ""
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    ks = attrs.get("kernel_shape")
    if not ks:
        return ""
    strides = attrs.get("strides") or [1]
    text = "x".join(str(k) for k in ks)
    if max(strides) > 1:
        text += f"/{max(strides)}"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return text + (f" g{group}" if group > 1 else "")  # grouped (g = channels: depthwise)


def block_label(add: str) -> str:
    """A short name for a residual Add: ``/layer1/layer1.0/Add`` -> ``layer1.0``."""
    parts = [p for p in add.split("/") if p]
    if len(parts) >= 2 and parts[-1].split("_")[0].lower() in ("add", "sum"):
        return parts[-2]
    return parts[-1] if parts else add


class _Describer:
    def __init__(
        self,
        int8: onnx.ModelProto,
        plan: Mapping[str, Any],
        kept_why: Mapping[str, str],
        engine: Mapping[str, EngineLayer],
        changed: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.changed = dict(changed or {})
        self.g = _Graph(int8)
        self.policy = str(plan.get("policy", ""))
        self.acts = {a["tensor"]: a for a in plan.get("activations", []) if isinstance(a, dict) and "tensor" in a}
        self.weights = {w["node"]: w.get("rule", "") for w in plan.get("weights", []) if isinstance(w, dict)}
        self.kept = {str(k): kept_why.get(str(k), "kept") for k in plan.get("kept_fp", [])}
        self.engine = engine

    def mark(self, node: str, tensor: str) -> Mark | None:
        """The Q/DQ pair ``node`` reads ``tensor`` through, if any, with the plan's rules for it."""
        q = self.g.quantized_edge(node, tensor)
        return None if q is None else self.pair(q)

    def pair(self, quantized: str) -> Mark:
        entry = self.acts.get(quantized, {})
        return Mark(quantized, tuple(str(r) for r in entry.get("rules", [])), str(entry.get("dtype", "")), self.g.dq_readers(quantized))

    def ops(self, path: Sequence[str], start: str) -> list[Op]:
        out, prev = [], start
        for name in path:
            n = self.g.nodes.get(name)
            out.append(
                Op(
                    name,
                    n.op_type if n is not None else "?",
                    _detail(n),
                    self.weights.get(name),
                    self.kept.get(name),
                    self.mark(name, prev),
                    self.changed.get(name, ()),
                )
            )
            prev = n.output[0] if n is not None else prev
        return out

    def fusions(self, entry: Mapping[str, Any], block: ResidualBlock, main: list[Op], short: list[Op]) -> list[Fusion]:
        """The kernels of the block: the Add's (the plan says), and each quantized weighted op's (+ its ReLU)."""
        out: list[Fusion] = []
        add_group: tuple[str, ...] = ()
        if entry.get("fused"):
            tail = (block.follower_node,) if block.follower_node else ()
            if self.policy == "tensorrt":
                at = next((i for i, o in enumerate(main) if o.node == block.main_conv), len(main))
                add_group = (*(o.node for o in main[at:]), block.add, *tail)
            else:
                add_group = (block.add, *tail)
            out.append(Fusion(add_group, str(entry.get("kernel", ""))))
        for branch in (main, short):
            for i, o in enumerate(branch):
                if o.op not in WEIGHTED_OPS or o.precision != "int8" or o.qdq_in is None or o.node in add_group:
                    continue  # an INT8 kernel reads INT8 weights and a quantized input
                relu = branch[i + 1] if i + 1 < len(branch) and branch[i + 1].op == "Relu" else None
                last = self.g.nodes[(relu or o).node].output[0]
                if self.policy == "tensorrt":
                    out.append(Fusion((o.node, *((relu.node,) if relu else ())), f"INT8 {o.op}" + ("+ReLU" if relu else "")))
                elif self.g.output_quantized(last):
                    out.append(
                        Fusion(
                            (o.node, *((relu.node,) if relu else ())),
                            KERNELS.get(o.op, o.op) + (" (ReLU folded into its Q)" if relu else ""),
                        )
                    )
        return out

    def block(self, entry: Mapping[str, Any], b: ResidualBlock) -> Block:
        main = self.ops(list(b.main_nodes), b.block_input)
        short = self.ops(list(b.shortcut_nodes), b.block_input)
        follower = None
        if b.follower_node:
            follower = Op(b.follower_node, "Relu", kept=self.kept.get(b.follower_node))
        out_tensor = self.g.nodes[b.follower_node].output[0] if b.follower_node else b.output
        output_mark = self.pair(out_tensor) if self.g.output_quantized(out_tensor) else None
        return Block(
            add=b.add,
            label=block_label(b.add),
            block_input=b.block_input,
            main=tuple(main),
            main_into_add=self.mark(b.add, b.main),
            shortcut_kind=b.shortcut_kind,
            shortcut=tuple(short),
            shortcut_into_add=self.mark(b.add, b.shortcut),
            add_kept=self.kept.get(b.add),
            follower=follower,
            output_mark=output_mark,
            fused=bool(entry.get("fused")),
            kernel=str(entry.get("kernel", "")),
            rule=str(entry.get("rule", "")),
            fusions=tuple(self.fusions(entry, b, main, short)),
            engine=self.engine.get(b.add),
        )


def describe_blocks(
    int8: onnx.ModelProto,
    plan: Mapping[str, Any],
    *,
    kept_why: Mapping[str, str] | None = None,
    engine: Mapping[str, EngineLayer] | None = None,
    changed: Mapping[str, tuple[str, ...]] | None = None,
) -> BlockPicture:
    """The block picture's content: one Block per residual Add of ``plan``, in graph order.

    Args:
        int8: the INT8 Q/DQ model of the build (``model.int8.onnx``).
        plan: ``qdq_plan.json`` as a dict (its ``residual_adds`` say which Adds are drawn).
        kept_why: node name -> why it is kept in FP (see :func:`kept_reasons`); default "kept".
        engine: residual Add name -> its engine layer (see :func:`engine_layers`), GPU builds only.
        changed: node name -> what build stages changed in it (see :func:`stage_changes`), drawn as marks.

    Returns:
        A BlockPicture; a plan Add the graph no longer holds as a residual Add is left out.
    """
    d = _Describer(int8, plan, kept_why or {}, engine or {}, changed)
    found = {b.add: b for b in find_residual_blocks(d.g.float_view)}
    blocks = [d.block(e, found[e["add"]]) for e in plan.get("residual_adds", []) if isinstance(e, dict) and e.get("add") in found]
    inside = {o.node for b in blocks for o in (*b.main, *b.shortcut)} | {b.add for b in blocks}
    outside = tuple((k, d.g.nodes[k].op_type if k in d.g.nodes else "?", why) for k, why in sorted(d.kept.items()) if k not in inside)
    rules = {str(k): str(v) for k, v in sorted((plan.get("rules") or {}).items())}
    return BlockPicture(d.policy, tuple(blocks), rules, outside, dict(changed or {}))


def stage_changes(report: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Node name -> the marks of :data:`CHANGE_MARKS` whose report section lists it (``stages.equalize.convs`` and
    ``.affines``: the Mul/Add/normalization nodes of equalized affine pairs; ``stages.bias_correction.convs``); empty
    for a build that ran neither."""
    stages = report.get("stages") if isinstance(report.get("stages"), Mapping) else {}
    out: dict[str, tuple[str, ...]] = {}
    for mark, section in CHANGE_MARKS.items():
        entry = stages.get(section) if isinstance(stages, Mapping) else None
        for key in ("convs", "affines"):
            nodes = entry.get(key) if isinstance(entry, Mapping) else None
            for node in nodes if isinstance(nodes, list) else []:
                if mark not in out.get(str(node), ()):
                    out[str(node)] = (*out.get(str(node), ()), mark)
    return out


def kept_reasons(
    int8: onnx.ModelProto, kept: Iterable[str], *, keep_fp: Sequence[str] = (), keep_first_last: bool = False, fallback: Iterable[str] = ()
) -> dict[str, str]:
    """Why each kept node stays in floating point: ``keep-fp``, ``keep-first-last``, ``auto-fallback`` (joined
    with ``, `` when several hold); ``kept`` when none of the given settings explains it.

    Args:
        int8: the INT8 model (its Q/DQ pairs are looked through).
        kept: the plan's ``kept_fp``.
        keep_fp: the build's ``--keep-fp`` patterns; keep_first_last: its ``--keep-first-last``.
        fallback: nodes the auto fallback kept (the report's accepted ``fallback.steps[].unit.nodes``).
    """
    view = _Graph(int8).float_view
    by_pattern: set[str] = set()
    for p in keep_fp:
        try:
            by_pattern |= kept_nodes(view, (p,), False)
        except UsageError:  # a pattern of another model (a report read back): explains nothing here
            continue
    first_last = kept_nodes(view, (), True) if keep_first_last else set()
    fell_back = set(fallback)
    out = {}
    for k in kept:
        why = [r for r, hit in zip(KEEP_REASONS, (k in by_pattern, k in first_last, k in fell_back), strict=True) if hit]
        out[k] = ", ".join(why) or "kept"
    return out


def engine_layers(info: str | dict[str, Any], int8: onnx.ModelProto, *, dla: bool = False) -> dict[str, EngineLayer]:
    """Residual Add name -> the engine layer it was fused into, from engine-inspector JSON (``model.plan.layers.json``).

    The same matching the engine build's fusion check does (``engine/layerinfo.py``), over the same
    blocks: those of the INT8 model the engine was built from.
    """
    fusion = check_residual_fusion(info, find_residual_blocks(int8), node_order=[n.name for n in int8.graph.node], dla=dla)
    return {a.add: EngineLayer(a.layer, a.status, a.layer_type, a.note) for a in fusion.adds}
