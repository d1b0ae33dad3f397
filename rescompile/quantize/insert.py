"""Apply a QuantPlan: INT8 weight initializers with per-channel DequantizeLinear, shared activation Q/DQ.

Names are derived from the quantized tensor (``<t>_QuantizeLinear``, ``<t>_scale`` ...), and
nodes are emitted in a fixed order, so identical inputs give byte-identical models.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescompile.calibrate.ranges import TensorRange
from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name
from rescompile.quantize.policy import ActivationQuant, QuantPlan, WeightQuant

_EPS = 1e-12


def activation_qparams(r: TensorRange, q: ActivationQuant) -> tuple[np.float32, np.integer]:
    """Scale and zero point of an activation: symmetric INT8 or asymmetric UINT8."""
    if q.symmetric:
        return np.float32(max(r.amax, _EPS) / 127.0), np.int8(0)
    lo, hi = min(r.min, 0.0), max(r.max, 0.0)
    scale = max(hi - lo, _EPS) / 255.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zp)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8: scale = amax/127 per output channel, values in [-127, 127]."""
    moved = np.moveaxis(w.astype(np.float64), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def _weight_nodes(wq: WeightQuant, w: np.ndarray) -> tuple[list[TensorProto], onnx.NodeProto, str]:
    q, scale = quantize_weight(w, wq.axis)
    base = wq.initializer
    out = f"{base}_dequantized"
    inits = [
        numpy_helper.from_array(q, f"{base}_quantized"),
        numpy_helper.from_array(scale, f"{base}_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
    ]
    node = helper.make_node(
        "DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"], [out],
        name=f"{base}_DequantizeLinear", axis=wq.axis,
    )  # fmt: skip
    return inits, node, out


def _activation_nodes(q: ActivationQuant, r: TensorRange) -> tuple[list[TensorProto], list[onnx.NodeProto], str]:
    scale, zp = activation_qparams(r, q)
    t = q.tensor
    inits = [
        numpy_helper.from_array(np.asarray(scale, np.float32), f"{t}_scale"),
        numpy_helper.from_array(np.asarray(zp), f"{t}_zero_point"),
    ]
    out = f"{t}_dequantized"
    nodes = [
        helper.make_node("QuantizeLinear", [t, f"{t}_scale", f"{t}_zero_point"], [f"{t}_quantized"],
                         name=f"{t}_QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{t}_quantized", f"{t}_scale", f"{t}_zero_point"], [out],
                         name=f"{t}_DequantizeLinear"),
    ]  # fmt: skip
    return inits, nodes, out


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, TensorRange]) -> onnx.ModelProto:
    """Return a new model with Q/DQ inserted as ``plan`` says, scales from ``ranges``.

    Raises:
        UsageError: a planned tensor has no calibrated range, or the plan does not fit the model.
    """
    src = onnx.ModelProto.FromString(model.SerializeToString())
    g = src.graph
    idx = GraphIndex.build(g)
    nodes_by_name = {node_name(n): n for n in g.node}
    new_inits: list[TensorProto] = []
    head: list[onnx.NodeProto] = []
    after: dict[str, list[onnx.NodeProto]] = {}
    rewired: dict[tuple[str, int], str] = {}  # (node name, input index) -> new input

    done_weights: dict[str, str] = {}
    for wq in plan.weights:
        if wq.initializer not in idx.initializers:
            raise UsageError(f"plan names weight {wq.initializer!r}, which the model does not have")
        if wq.initializer not in done_weights:
            inits, node, out = _weight_nodes(wq, numpy_helper.to_array(idx.initializers[wq.initializer]))
            new_inits += inits
            head.append(node)
            done_weights[wq.initializer] = out
        rewired[(wq.node, 1)] = done_weights[wq.initializer]

    for q in plan.activations:
        if q.scale_from not in ranges:
            raise UsageError(f"no calibrated range for tensor {q.scale_from!r}", hint="recalibrate for this plan")
        inits, qdq, out = _activation_nodes(q, ranges[q.scale_from])
        new_inits += inits
        producer = idx.producer.get(q.tensor)
        if producer is None:
            head.extend(qdq)
        else:
            after.setdefault(node_name(producer), []).extend(qdq)
        for c in q.consumers:
            name, _, i = c.rpartition(":")
            if name not in nodes_by_name:
                raise UsageError(f"plan names consumer {name!r}, which the model does not have")
            rewired[(name, int(i))] = out

    ordered: list[onnx.NodeProto] = list(head)
    for n in g.node:
        for i in range(len(n.input)):
            new = rewired.get((node_name(n), i))
            if new is not None:
                n.input[i] = new
        ordered.append(n)
        ordered.extend(after.get(node_name(n), []))
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    # Value infos of the FP32 graph stay valid; shapes of new tensors are inferred by runtimes.
    onnx.checker.check_model(src)
    return src
