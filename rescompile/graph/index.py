"""A read-only index of an ONNX graph: who produces and who consumes each tensor."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import onnx


@dataclass
class GraphIndex:
    """Producer/consumer maps for one graph; build once, query many times."""

    graph: onnx.GraphProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(default_factory=lambda: defaultdict(list))
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    graph_inputs: set[str] = field(default_factory=set)
    graph_outputs: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> GraphIndex:
        idx = cls(graph)
        idx.initializers = {t.name: t for t in graph.initializer}
        idx.graph_inputs = {i.name for i in graph.input if i.name not in idx.initializers}
        idx.graph_outputs = {o.name for o in graph.output}
        for node in graph.node:
            for out in node.output:
                if out:
                    idx.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    idx.consumers[name].append((node, i))
        return idx

    def is_constant(self, name: str) -> bool:
        """True for initializers and outputs of Constant nodes (weights, shapes, scales)."""
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def is_activation(self, name: str) -> bool:
        return bool(name) and not self.is_constant(name)

    def constant_value(self, name: str):  # type: ignore[no-untyped-def]
        """The numpy value of an initializer or Constant output, else None."""
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None


def node_name(node: onnx.NodeProto) -> str:
    """A node's name, or a stable stand-in built from its first output when it has none."""
    return node.name or f"{node.op_type}:{node.output[0]}"
