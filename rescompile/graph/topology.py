"""Residual-block discovery: every residual Add, its main branch, its shortcut, what follows.

A residual Add is an ``Add`` whose two inputs are both activations. Its two branches meet at
their nearest common ancestor (the block input); the branch with more nodes between that
ancestor and the Add is the main branch (conv-relu-conv, bottleneck, pre-activation), the
other is the shortcut (identity, a projection Conv, or AvgPool + Conv as in ResNet-D).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import onnx

from rescompile.graph.index import GraphIndex, node_name

# Ops a shortcut may pass through without being a "main branch".
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

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["shortcut_nodes"] = list(self.shortcut_nodes)
        return d


def _ancestors(idx: GraphIndex, tensor: str) -> dict[str, int]:
    """Breadth-first distances (in nodes) from ``tensor`` back to each activation ancestor."""
    dist = {tensor: 0}
    queue = deque([tensor])
    while queue and len(dist) < _MAX_SEARCH_NODES:
        t = queue.popleft()
        node = idx.producer.get(t)
        if node is None:
            continue
        for inp in node.input:
            if inp and idx.is_activation(inp) and inp not in dist:
                dist[inp] = dist[t] + 1
                queue.append(inp)
    return dist


def _path_nodes(idx: GraphIndex, start: str, stop: str) -> list[onnx.NodeProto]:
    """Nodes from ``stop`` (exclusive) to ``start`` along the first activation input."""
    nodes: list[onnx.NodeProto] = []
    t = start
    while t != stop:
        node = idx.producer.get(t)
        if node is None:
            break
        nodes.append(node)
        acts = [i for i in node.input if i and idx.is_activation(i)]
        if not acts:
            break
        t = acts[0]
    return list(reversed(nodes))


def _shortcut_kind(path: list[onnx.NodeProto]) -> str:
    ops = [n.op_type for n in path]
    weighted = [o for o in ops if o in ("Conv", "BatchNormalization")]
    if not ops:
        return "identity"
    if ops and ops[-1] in ("Conv", "BatchNormalization") and len(weighted) == len(ops):
        return "projection"
    if weighted and all(o in ("Conv", "BatchNormalization", "AveragePool", "MaxPool") for o in ops):
        return "pooled-projection"
    return "other"


def find_residual_blocks(model: onnx.ModelProto) -> list[ResidualBlock]:
    """Every residual Add of ``model``'s main graph, in graph order.

    Args:
        model: any ONNX model (a graph with no residual Add gives an empty list).

    Returns:
        One ResidualBlock per Add whose two inputs are both activations.
    """
    idx = GraphIndex.build(model.graph)
    blocks: list[ResidualBlock] = []
    for node in model.graph.node:
        if node.op_type not in ("Add", "Sum") or len(node.input) != 2:
            continue
        a, b = node.input
        if not (idx.is_activation(a) and idx.is_activation(b)) or a == b:
            continue
        da, db = _ancestors(idx, a), _ancestors(idx, b)
        common = set(da) & set(db)
        if not common:
            continue
        # Nearest common ancestor: fewest nodes on the longer branch, then on the shorter.
        lca = min(common, key=lambda t: (max(da[t], db[t]), min(da[t], db[t]), t))
        if da[lca] >= db[lca]:
            main, short = a, b
        else:
            main, short = b, a
        main_prod = idx.producer.get(main)
        short_path = _path_nodes(idx, short, lca)
        consumers = idx.consumers.get(node.output[0], [])
        follower = None
        if len(consumers) == 1 and consumers[0][0].op_type == "Relu" and node.output[0] not in idx.graph_outputs:
            follower = consumers[0][0]
        blocks.append(
            ResidualBlock(
                add=node_name(node),
                output=node.output[0],
                main=main,
                main_producer=node_name(main_prod) if main_prod is not None else "",
                main_producer_op=main_prod.op_type if main_prod is not None else "",
                main_depth=max(da[lca], db[lca]),
                shortcut=short,
                shortcut_kind=_shortcut_kind(short_path),
                shortcut_nodes=tuple(node_name(n) for n in short_path),
                block_input=lca,
                follower="Relu" if follower is not None else None,
                follower_node=node_name(follower) if follower is not None else None,
            )
        )
    return blocks
