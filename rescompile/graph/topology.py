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

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import onnx

from rescompile.graph.index import GraphIndex, node_name
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
    const = set(idx.initializers)
    for node in idx.graph.node:  # graph order is topological
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(o for o in node.output if o)
    return const


class _Topo:
    """A GraphIndex plus the constant closure; answers "is this an activation?"."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.idx = GraphIndex.build(model.graph)
        self.const = constant_tensors(self.idx)
        # each produced tensor's step back: the activation inputs of its producer (read once from the protos)
        self.back = {t: self.activation_inputs(node) for t, node in self.idx.producer.items()}
        self._ancestors: dict[str, dict[str, int]] = {}

    def is_activation(self, name: str) -> bool:
        return bool(name) and name not in self.const

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if self.is_activation(i)]

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

    def path(self, start: str, stop: str) -> list[onnx.NodeProto]:
        """Nodes from ``stop`` (exclusive) to ``start``, in graph order.

        Each step back takes the activation input that descends from ``stop`` (the branch that
        really leads to the block input), not merely the first one.
        """
        nodes: list[onnx.NodeProto] = []
        t = start
        while t != stop:
            node = self.idx.producer.get(t)
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
    """Every residual Add of ``model``'s main graph, in graph order.

    Args:
        model: any ONNX model (a graph with no residual Add gives an empty list).

    Returns:
        One ResidualBlock per Add whose two inputs are both activations with a common ancestor.
    """
    topo = _Topo(model)
    idx = topo.idx
    blocks: list[ResidualBlock] = []
    for node in model.graph.node:
        if node.op_type not in ADD_OPS or len(node.input) != 2:
            continue
        a, b = node.input
        if not (topo.is_activation(a) and topo.is_activation(b)) or a == b:
            continue
        da, db = topo.ancestors(a), topo.ancestors(b)
        common = set(da) & set(db)
        if not common:
            continue
        # Nearest common ancestor: fewest nodes on the longer branch, then on the shorter.
        lca = min(common, key=lambda t: (max(da[t], db[t]), min(da[t], db[t]), t))
        main, short = (a, b) if da[lca] >= db[lca] else (b, a)
        main_prod = idx.producer.get(main)
        main_path = topo.path(main, lca)
        short_path = topo.path(short, lca)
        consumers = idx.consumers.get(node.output[0], [])
        follower = None
        if len(consumers) == 1 and consumers[0][0].op_type == "Relu" and node.output[0] not in idx.graph_outputs:
            follower = consumers[0][0]
        short_ops = [n.op_type for n in short_path]
        blocks.append(
            ResidualBlock(
                add=node_name(node),
                output=node.output[0],
                main=main,
                main_producer=node_name(main_prod) if main_prod is not None else "",
                main_producer_op=main_prod.op_type if main_prod is not None else "",
                main_depth=max(da[lca], db[lca]),
                shortcut=short,
                shortcut_kind=_shortcut_kind(short_ops),
                shortcut_nodes=tuple(node_name(n) for n in short_path),
                block_input=lca,
                follower="Relu" if follower is not None else None,
                follower_node=node_name(follower) if follower is not None else None,
                main_ops=tuple(n.op_type for n in main_path),
                shortcut_ops=tuple(short_ops),
                main_conv=next((node_name(n) for n in reversed(main_path) if n.op_type in LINEAR_OPS), None),
                main_nodes=tuple(node_name(n) for n in main_path),
            )
        )
    return blocks


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
