"""Residual-block discovery: every residual Add, its main branch, its shortcut, what follows.

A residual Add is an ``Add`` (or two-input ``Sum``) whose two inputs are both activations. Its
two branches meet at their nearest common ancestor (the block input); the branch with more
nodes between that ancestor and the Add is the main branch (conv-relu-conv, bottleneck,
pre-activation), the other is the shortcut: the block input itself (identity), a projection
Conv, or AvgPool + Conv as in ResNet-D (pooled projection). What follows the Add is a ReLU
(post-activation ResNets) or nothing (pre-activation ResNets).

Tensors computed only from constants (``Identity``/``Cast``/``Reshape`` of initializers, as
unsimplified exports contain) count as constants, not activations.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import onnx

from rescompile.graph.index import GraphIndex
from rescompile.graph.ops import ADD_OPS, LINEAR_OPS, POOL_OPS

# Ancestors visited per Add input: the block input is a few nodes away, this only bounds odd graphs.
_MAX_SEARCH_NODES = 400


@dataclass(frozen=True)
class ResidualBlock:
    """One residual Add and how its inputs are formed."""

    add: str  # Add node name
    output: str  # Add output tensor
    main: str  # main-branch input tensor of the Add
    main_producer: str  # node producing it (normally the block's last Conv)
    main_producer_op: str
    main_depth: int  # nodes between the block input and the Add on the main branch
    shortcut: str  # shortcut input tensor of the Add
    shortcut_kind: str  # "identity" | "projection" | "pooled-projection" | "other"
    shortcut_nodes: tuple[str, ...]  # nodes on the shortcut path (empty for identity)
    block_input: str  # nearest common ancestor tensor of both branches
    follower: str | None  # "Relu" when the Add feeds exactly one ReLU, else None
    follower_node: str | None
    main_ops: tuple[str, ...] = ()  # op types along the main branch, block input to Add
    shortcut_ops: tuple[str, ...] = ()  # op types along the shortcut
    main_conv: str | None = None  # the last Conv (weighted op) of the main branch, even if a BatchNorm follows it
    main_nodes: tuple[str, ...] = ()  # nodes on the main branch, block input to Add (what main_ops names)

    def to_dict(self) -> dict[str, Any]:
        """The record of ``inspect --json`` and a bundle's block list (node names of the main branch not included)."""
        d = asdict(self)
        del d["main_nodes"]
        for k in ("shortcut_nodes", "main_ops", "shortcut_ops"):
            d[k] = list(d[k])
        return d


def constant_tensors(idx: GraphIndex) -> set[str]:
    """Initializers, Constant outputs, and every tensor computed only from those."""
    return _constant_closure(set(idx.initializers), ((n.op_type, n.input, n.output) for n in idx.graph.node))


def _constant_closure(const: set[str], nodes: Iterable[tuple[str, Sequence[str], Sequence[str]]]) -> set[str]:
    """``const`` (initializer names) with every output of a Constant, or of a node whose inputs are all in it
    (``nodes``: op type, inputs, outputs, in graph order, which is topological)."""
    for op_type, inputs, outputs in nodes:
        ins = [i for i in inputs if i]
        if op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(o for o in outputs if o)
    return const


class _Node(NamedTuple):
    """What block discovery reads of a node."""

    name: str  # node_name's: its name, or "<op>:<first output>"
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class _Structure(NamedTuple):
    """All that block discovery reads of a graph, so its blocks are cached by it: a graph whose nodes (names, ops,
    edges, in order), initializer names or outputs change is another key."""

    nodes: tuple[_Node, ...]
    initializers: frozenset[str]
    outputs: frozenset[str]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> _Structure:
        nodes = tuple(
            _Node(n.name or (f"{n.op_type}:{n.output[0]}" if n.output else ""), n.op_type, tuple(n.input), tuple(n.output))
            for n in graph.node
        )
        return cls(nodes, frozenset(t.name for t in graph.initializer), frozenset(o.name for o in graph.output))


class _Topo:
    """A graph's producers and consumers plus the constant closure; answers "is this an activation?"."""

    def __init__(self, graph: _Structure) -> None:
        self.graph = graph
        self.producer: dict[str, _Node] = {}
        self.consumers: dict[str, list[_Node]] = {}  # one entry per input that reads the tensor
        for node in graph.nodes:
            self.producer.update((o, node) for o in node.outputs if o)
            for i in node.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        self.const = _constant_closure(set(graph.initializers), ((n.op_type, n.inputs, n.outputs) for n in graph.nodes))
        # each produced tensor's step back: the activation inputs of its producer
        self.back = {t: self.activation_inputs(node) for t, node in self.producer.items()}
        self._ancestors: dict[str, dict[str, int]] = {}

    def is_activation(self, name: str) -> bool:
        return bool(name) and name not in self.const

    def activation_inputs(self, node: _Node) -> list[str]:
        return [i for i in node.inputs if self.is_activation(i)]

    def ancestors(self, tensor: str) -> dict[str, int]:
        """Breadth-first distances (in nodes) from ``tensor`` back to each activation ancestor (found once per tensor:
        the caller must not change the dict)."""
        dist = self._ancestors.get(tensor)
        if dist is not None:
            return dist
        dist = self._ancestors[tensor] = {tensor: 0}
        queue = deque([tensor])
        while queue and len(dist) < _MAX_SEARCH_NODES:
            t = queue.popleft()
            for inp in self.back.get(t, ()):
                if inp not in dist:
                    dist[inp] = dist[t] + 1
                    queue.append(inp)
        return dist

    def path(self, start: str, stop: str) -> list[_Node]:
        """Nodes from ``stop`` (exclusive) to ``start``, in graph order.

        Each step back takes the activation input that descends from ``stop`` (the branch that
        really leads to the block input), not merely the first one.
        """
        nodes: list[_Node] = []
        t = start
        while t != stop:
            node = self.producer.get(t)
            if node is None:
                break
            nodes.append(node)
            acts = self.back[t]
            if not acts:
                break
            leading = [a for a in acts if a == stop or stop in self.ancestors(a)]
            t = (leading or acts)[0]
        return list(reversed(nodes))


def _shortcut_kind(ops: list[str]) -> str:
    if not ops:
        return "identity"
    weighted = [o for o in ops if o in LINEAR_OPS]
    if weighted and all(o in (*LINEAR_OPS, "BatchNormalization") for o in ops):
        return "projection"
    if weighted and all(o in (*LINEAR_OPS, "BatchNormalization", *POOL_OPS) for o in ops):
        return "pooled-projection"
    return "other"


def find_residual_blocks(model: onnx.ModelProto) -> list[ResidualBlock]:
    """Every residual Add of ``model``'s main graph, in graph order (found once per graph structure: the build's
    stages and the proof ask for the same graph's blocks again).

    Args:
        model: any ONNX model (a graph with no residual Add gives an empty list).

    Returns:
        One ResidualBlock per Add whose two inputs are both activations with a common ancestor.
    """
    return list(_blocks(_Structure.of(model.graph)))


@functools.lru_cache(maxsize=16)
def _blocks(graph: _Structure) -> tuple[ResidualBlock, ...]:
    topo = _Topo(graph)
    found = (_block(topo, node) for node in graph.nodes if node.op_type in ADD_OPS and len(node.inputs) == 2)
    return tuple(b for b in found if b is not None)


def _block(topo: _Topo, node: _Node) -> ResidualBlock | None:
    """The residual block of a two-input Add, or None when an input is a constant or the branches never meet."""
    a, b = node.inputs
    if not (topo.is_activation(a) and topo.is_activation(b)) or a == b:
        return None
    da, db = topo.ancestors(a), topo.ancestors(b)
    common = set(da) & set(db)
    if not common:
        return None
    # Nearest common ancestor: fewest nodes on the longer branch, then on the shorter.
    lca = min(common, key=lambda t: (max(da[t], db[t]), min(da[t], db[t]), t))
    main, short = (a, b) if da[lca] >= db[lca] else (b, a)
    main_prod = topo.producer.get(main)
    main_path = topo.path(main, lca)
    short_path = topo.path(short, lca)
    consumers = topo.consumers.get(node.outputs[0], [])
    follower = None
    if len(consumers) == 1 and consumers[0].op_type == "Relu" and node.outputs[0] not in topo.graph.outputs:
        follower = consumers[0]
    short_ops = [n.op_type for n in short_path]
    return ResidualBlock(
        add=node.name,
        output=node.outputs[0],
        main=main,
        main_producer=main_prod.name if main_prod is not None else "",
        main_producer_op=main_prod.op_type if main_prod is not None else "",
        main_depth=max(da[lca], db[lca]),
        shortcut=short,
        shortcut_kind=_shortcut_kind(short_ops),
        shortcut_nodes=tuple(n.name for n in short_path),
        block_input=lca,
        follower="Relu" if follower is not None else None,
        follower_node=follower.name if follower is not None else None,
        main_ops=tuple(n.op_type for n in main_path),
        shortcut_ops=tuple(short_ops),
        main_conv=next((n.name for n in reversed(main_path) if n.op_type in LINEAR_OPS), None),
        main_nodes=tuple(n.name for n in main_path),
    )


def block_map(model: onnx.ModelProto) -> dict[str, Any]:
    """The block map as plain data (what ``rescompile inspect --json`` writes)."""
    blocks = find_residual_blocks(model)
    kinds: dict[str, int] = {}
    for b in blocks:
        kinds[b.shortcut_kind] = kinds.get(b.shortcut_kind, 0) + 1
    return {
        "schema": "rescompile.block_map/1",
        "residual_adds": len(blocks),
        "shortcut_kinds": dict(sorted(kinds.items())),
        "followers": {"Relu": sum(b.follower == "Relu" for b in blocks), "none": sum(b.follower is None for b in blocks)},
        "blocks": [b.to_dict() for b in blocks],
    }
