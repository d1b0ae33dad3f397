"""Apply a QuantPlan: INT8 weight initializers with per-channel DequantizeLinear, shared activation Q/DQ.

Weights are stored as INT8 initializers (the float originals are dropped, so the file is about
4x smaller), biases as INT32 where the plan says so. Names are derived from the quantized
tensor (``<t>_QuantizeLinear``, ``<t>_scale`` ...), made unique against the graph's own names
in a fixed order, and nodes are emitted in a fixed order, so identical inputs give
byte-identical models.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import TensorProto, helper, numpy_helper

from rescompile.calibrate.ranges import TensorRange
from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name
from rescompile.quantize.policy import ActivationQuant, BiasQuant, QuantPlan, WeightQuant

_EPS = 1e-12
_INT32 = np.iinfo(np.int32)


def activation_qparams(r: TensorRange, q: ActivationQuant) -> tuple[np.float32, np.integer]:
    """Scale and zero point of an activation: symmetric INT8, or asymmetric UINT8 over [min(lo,0), max(hi,0)]."""
    if q.symmetric:
        return np.float32(max(r.amax, _EPS) / 127.0), np.int8(0)
    lo, hi = min(r.min, 0.0), max(r.max, 0.0)
    scale = max(hi - lo, _EPS) / 255.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zp)


def quantize_weight(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8: scale = amax/qmax per output channel, values in [-qmax, qmax], qmax = 2^(bits-1) - 1.

    ``bits`` 8 uses the full range [-127, 127]; 7 keeps [-63, 63] (the ``onnxruntime`` policy, O7).
    """
    qmax = float(2 ** (bits - 1) - 1)
    # |w| of a float is exact in its own type, so its max is the float64 one; an integer's abs could overflow
    moved = np.moveaxis(w if np.issubdtype(w.dtype, np.floating) else w.astype(np.float64), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    x = w / scale.reshape(shape)
    np.clip(np.round(x, out=x), -qmax, qmax, out=x)
    return x.astype(np.int8), scale


def quantize_bias(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """INT32 bias with scale = input scale x weight scale (per output channel), zero point 0."""
    scale = (np.float64(input_scale) * weight_scale.astype(np.float64)).astype(np.float32)
    q = np.clip(np.round(b.astype(np.float64) / scale.astype(np.float64)), _INT32.min, _INT32.max).astype(np.int32)
    return q, scale


class _Names:
    """Fresh tensor/node names: the readable base, or base_1, base_2 ... if the graph already uses it."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.used = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
        self.used |= {x for n in g.node for x in (*n.input, *n.output, n.name) if x}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _constant_dq(base: str, q: np.ndarray, scale: np.ndarray, axis: int, names: _Names) -> tuple[list[TensorProto], onnx.NodeProto, str]:
    """A quantized constant (INT8 weight or INT32 bias) and its per-axis DequantizeLinear, zero point 0."""
    qn, sn, zn, out = names(f"{base}_quantized"), names(f"{base}_scale"), names(f"{base}_zero_point"), names(f"{base}_dequantized")
    inits = [
        numpy_helper.from_array(q, qn),
        numpy_helper.from_array(scale, sn),
        numpy_helper.from_array(np.zeros(scale.shape, q.dtype), zn),
    ]
    node = helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=names(f"{base}_DequantizeLinear"), axis=axis)
    return inits, node, out


def _weight_nodes(wq: WeightQuant, w: np.ndarray, names: _Names) -> tuple[list[TensorProto], onnx.NodeProto, str, np.ndarray]:
    q, scale = quantize_weight(w, wq.axis, wq.bits)
    return (*_constant_dq(wq.initializer, q, scale, wq.axis, names), scale)


def _bias_nodes(
    bq: BiasQuant, b: np.ndarray, input_scale: float, weight_scale: np.ndarray, base: str, names: _Names
) -> tuple[list[TensorProto], onnx.NodeProto, str]:
    q, scale = quantize_bias(b, input_scale, weight_scale)
    return _constant_dq(base, q, scale, bq.axis, names)


def _activation_nodes(
    q: ActivationQuant, scale: np.float32, zp: np.integer, names: _Names
) -> tuple[list[TensorProto], list[onnx.NodeProto], str]:
    t = q.tensor
    sn, zn, qt, out = names(f"{t}_scale"), names(f"{t}_zero_point"), names(f"{t}_quantized"), names(f"{t}_dequantized")
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), sn), numpy_helper.from_array(np.asarray(zp), zn)]
    nodes = [
        helper.make_node("QuantizeLinear", [t, sn, zn], [qt], name=names(f"{t}_QuantizeLinear")),
        helper.make_node("DequantizeLinear", [qt, sn, zn], [out], name=names(f"{t}_DequantizeLinear")),
    ]
    return inits, nodes, out


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, TensorRange]) -> onnx.ModelProto:
    """Return a new model with Q/DQ inserted as ``plan`` says, scales from ``ranges``.

    Raises:
        UsageError: a planned tensor has no calibrated range, or the plan does not fit the model.
    """
    edit = _Edit(model.graph)  # reads the source; the edits go to a copy
    act_params = _activation_params(plan, ranges, edit.idx)
    # names are handed out in this order (weights, biases, activations): identical inputs, identical names
    weight_scales = _add_weights(edit, plan)
    _add_biases(edit, plan, act_params, weight_scales)
    _add_activations(edit, plan, act_params)
    out = _copy_without_initializers(model)
    edit.apply(out.graph, model.graph.initializer)
    # Value infos of the FP32 graph stay valid; shapes of new tensors are inferred by runtimes.
    onnx.checker.check_model(out)
    return out


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without its graph's initializers (most of its bytes; :meth:`_Edit.apply` copies back those still read).

    Copied field by field; a model or graph with fields this onnx does not know is copied whole instead, so they stay.
    """
    if _has_unknown_fields(model) or _has_unknown_fields(model.graph):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        del copy.graph.initializer[:]
        return copy
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    return copy


def _copy_fields(src: Message, dst: Message, skip: str) -> None:
    """Every set field of ``src`` but ``skip`` into the empty ``dst`` (messages and repeated fields copied)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, Message):
            getattr(dst, field.name).CopyFrom(value)
        elif isinstance(value, (bool, int, float, str, bytes)):
            setattr(dst, field.name, value)
        else:  # a repeated field (told apart by its value: FieldDescriptor.label went in protobuf 6, is_repeated came)
            getattr(dst, field.name).extend(value)


def _has_unknown_fields(msg: Message) -> bool:
    """Whether ``msg`` itself holds fields its schema does not know (True when this protobuf cannot tell)."""
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # protobuf < 4.22
        return True
    return len(UnknownFieldSet(msg)) > 0


class _Edit:
    """The Q/DQ being added to a graph: new initializers, nodes (first, or after their producer) and rewired inputs."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.idx = GraphIndex.build(g)
        self.names = _Names(g)
        self.nodes_by_name = {node_name(n): n for n in g.node}
        self.new_inits: list[TensorProto] = []
        self.head: list[onnx.NodeProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.rewired: dict[tuple[str, int], str] = {}  # (node name, input index) -> new input

    def check_node(self, name: str, what: str) -> None:
        if name not in self.nodes_by_name:
            raise UsageError(f"plan names {what} {name!r}, which the model does not have", hint="re-plan for this model")

    def apply(self, g: onnx.GraphProto, initializers: Iterable[TensorProto]) -> None:
        """Rewire the inputs of ``g``'s nodes and put the new nodes in place; its initializers: those of ``initializers``
        (the source's) and the new ones, in that order, that some node still reads."""
        ordered: list[onnx.NodeProto] = list(self.head)
        for n in g.node:
            for i in range(len(n.input)):
                new = self.rewired.get((node_name(n), i))
                if new is not None:
                    n.input[i] = new
            ordered.append(n)
            ordered.extend(self.after.get(node_name(n), []))
        del g.node[:]
        g.node.extend(ordered)
        used = {i for n in g.node for i in n.input}
        g.initializer.extend(t for t in (*initializers, *self.new_inits) if t.name in used)


def _activation_params(plan: QuantPlan, ranges: dict[str, TensorRange], idx: GraphIndex) -> dict[str, tuple[np.float32, np.integer]]:
    """Scale and zero point of every planned activation (a UsageError for a missing range or tensor)."""
    act_params: dict[str, tuple[np.float32, np.integer]] = {}
    for q in plan.activations:
        if q.scale_from not in ranges:
            raise UsageError(f"no calibrated range for tensor {q.scale_from!r}", hint="recalibrate for this plan")
        if q.tensor not in idx.producer and q.tensor not in idx.graph_inputs:
            raise UsageError(f"plan quantizes tensor {q.tensor!r}, which the model does not have", hint="re-plan for this model")
        act_params[q.tensor] = activation_qparams(ranges[q.scale_from], q)
    return act_params


def _add_weights(edit: _Edit, plan: QuantPlan) -> dict[str, np.ndarray]:
    """INT8 weights with one DequantizeLinear per initializer, shared by its users; each weight's per-channel scales."""
    idx = edit.idx
    weight_scales: dict[str, np.ndarray] = {}
    weight_out: dict[str, str] = {}
    for wq in plan.weights:
        edit.check_node(wq.node, "weighted node")
        if wq.initializer not in idx.initializers:
            raise UsageError(f"plan names weight {wq.initializer!r}, which the model does not have")
        if wq.initializer not in weight_out:
            inits, node, out, scale = _weight_nodes(wq, numpy_helper.to_array(idx.initializers[wq.initializer]), edit.names)
            edit.new_inits += inits
            edit.head.append(node)
            weight_scales[wq.initializer], weight_out[wq.initializer] = scale, out
        edit.rewired[(wq.node, wq.input_index)] = weight_out[wq.initializer]
    return weight_scales


def _add_biases(
    edit: _Edit, plan: QuantPlan, act_params: dict[str, tuple[np.float32, np.integer]], weight_scales: dict[str, np.ndarray]
) -> None:
    """INT32 biases (scale: input scale x weight scale); a bias shared by nodes gets one copy per node."""
    idx = edit.idx
    shared = Counter(b.initializer for b in plan.biases)
    for bq in plan.biases:
        edit.check_node(bq.node, "biased node")
        if bq.initializer not in idx.initializers or bq.weight not in weight_scales:
            raise UsageError(f"plan quantizes bias {bq.initializer!r} of {bq.node!r} without its weight or initializer")
        if bq.input not in act_params:
            raise UsageError(f"plan quantizes bias {bq.initializer!r} but not the input {bq.input!r} its scale needs")
        base = bq.initializer if shared[bq.initializer] == 1 else f"{bq.initializer}_for_{bq.node}"
        inits, node, out = _bias_nodes(
            bq,
            numpy_helper.to_array(idx.initializers[bq.initializer]),
            float(act_params[bq.input][0]),
            weight_scales[bq.weight],
            base,
            edit.names,
        )
        edit.new_inits += inits
        edit.head.append(node)
        edit.rewired[(bq.node, bq.input_index)] = out


def _add_activations(edit: _Edit, plan: QuantPlan, act_params: dict[str, tuple[np.float32, np.integer]]) -> None:
    """A Q/DQ pair after each planned activation's producer (first, for a graph input), read by the planned consumers."""
    for q in plan.activations:
        act_scale, act_zp = act_params[q.tensor]
        inits, qdq, out = _activation_nodes(q, act_scale, act_zp, edit.names)
        edit.new_inits += inits
        producer = edit.idx.producer.get(q.tensor)
        if producer is None:
            edit.head.extend(qdq)
        else:
            edit.after.setdefault(node_name(producer), []).extend(qdq)
        for ref in q.consumers:
            name, _, index = ref.rpartition(":")
            edit.check_node(name, "consumer")
            k = int(index) if index.isdigit() else -1
            reads = edit.nodes_by_name[name].input[k] if 0 <= k < len(edit.nodes_by_name[name].input) else None
            if reads != q.tensor:
                raise UsageError(f"plan says {ref} reads {q.tensor!r}, but it reads {reads!r}", hint="re-plan for this model")
            edit.rewired[(name, k)] = out
