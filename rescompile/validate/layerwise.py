"""Layerwise blame: run the FP32 and the Q/DQ graph with every tensor exposed and find where error jumps.

Both graphs are run on ONNX Runtime with graph optimizations off (the plain Q/DQ semantics).
Tensors are matched by name (``insert_qdq`` keeps every FP32 name) and each Q/DQ view
``<t>_dequantized`` is compared with the FP32 ``<t>``. For every node where quantization
enters (a Q/DQ input or an INT8 weight), the *jump* is its output's relative error minus
the worst relative error of its inputs before quantization: the error that node adds.
Keeping the worst nodes in FP (``--keep-fp <node>``) removes exactly the Q/DQ they read.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from rescompile.errors import UsageError
from rescompile.graph.index import GraphIndex, node_name

SUGGEST_MAX = 3
SUGGEST_FRACTION = 0.25  # suggest nodes whose jump is at least this share of the worst jump
SUGGEST_FLOOR = 0.02  # ... and at least 2% relative error (healthy INT8 layers add ~1%)


@dataclass
class TensorError:
    tensor: str  # FP32 tensor name
    view: str  # the tensor compared in the candidate: the same name, or its DequantizeLinear output
    producer: str  # FP32 node producing it
    quantized: bool  # the view is a Q/DQ output
    rel_error: float  # ||fp32 - candidate|| / ||fp32|| over all samples
    cosine: float  # mean over samples
    cosine_min: float
    max_abs_error: float


@dataclass
class LayerError:
    node: str
    op: str
    quantized_inputs: list[str]  # FP32 tensors this node reads through a Q/DQ pair in the candidate
    weight_quantized: bool
    input_rel_error: float  # worst relative error of its inputs before quantization
    output_rel_error: float
    jump: float
    cosine: float
    keep_fp: str  # the --keep-fp pattern that keeps this node in higher precision


@dataclass
class Layerwise:
    samples: int
    tensors: list[TensorError] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)  # graph order
    ranking: list[str] = field(default_factory=list)  # node names, biggest jump first
    suggested_keep_fp: list[str] = field(default_factory=list)

    def layer(self, node: str) -> LayerError:
        return next(lay for lay in self.layers if lay.node == node)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def keep_fp_pattern(node: str) -> str:
    """A ``--keep-fp`` glob that matches exactly ``node`` (glob characters escaped)."""
    return glob.escape(node)


def qdq_views(model: onnx.ModelProto) -> dict[str, str]:
    """Activation tensor -> the DequantizeLinear output that carries its quantized value."""
    idx = GraphIndex.build(model.graph)
    views: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        q = idx.producer.get(n.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and idx.is_activation(q.input[0]):
            views.setdefault(q.input[0], n.output[0])
    return views


def _weight_dq_outputs(model: onnx.ModelProto) -> set[str]:
    idx = GraphIndex.build(model.graph)
    return {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and idx.is_constant(n.input[0])}


class _Acc:
    """Running error statistics of one tensor pair over batches."""

    def __init__(self) -> None:
        self.sq_diff = 0.0
        self.sq_ref = 0.0
        self.cos_sum = 0.0
        self.cos_min = 1.0
        self.max_abs = 0.0
        self.n = 0

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            raise UsageError(f"tensor shapes differ between the graphs: {ref.shape} vs {got.shape}")
        a = ref.reshape(len(ref), -1).astype(np.float64)
        b = got.reshape(len(got), -1).astype(np.float64)
        d = a - b
        self.sq_diff += float((d * d).sum())
        self.sq_ref += float((a * a).sum())
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)
        self.n += len(a)

    @property
    def rel_error(self) -> float:
        # An all-zero FP32 tensor with a non-zero candidate gets a huge but finite error (JSON has no inf).
        return float(np.sqrt(self.sq_diff) / max(np.sqrt(self.sq_ref), 1e-12))


def _session(model: onnx.ModelProto, outputs: Iterable[str]) -> Any:
    from rescompile.calibrate.collect import with_outputs
    from rescompile.runtime.sessions import ort_session

    return ort_session(with_outputs(model, outputs), optimize=False)


def layerwise_blame(fp32: onnx.ModelProto, candidate: onnx.ModelProto, inputs: np.ndarray, *, batch_size: int = 16) -> Layerwise:
    """Compare ``candidate`` (a Q/DQ graph made from ``fp32``) with ``fp32`` tensor by tensor.

    Args:
        fp32: the FP32 model the candidate was quantized from (same tensor and node names).
        candidate: the Q/DQ model.
        inputs: preprocessed float32 inputs, N,C,H,W (a few dozen are plenty).

    Returns:
        Errors per tensor and per quantized layer, the layers ranked by how much error they
        add, and the ``--keep-fp`` patterns that would remove the worst of it.

    Raises:
        UsageError: the graphs share no tensor names, or the candidate holds no Q/DQ.
    """
    if len(inputs) == 0:
        raise UsageError("layerwise blame needs at least one input")
    idx32 = GraphIndex.build(fp32.graph)
    idx8 = GraphIndex.build(candidate.graph)
    views = qdq_views(candidate)
    if not views and not _weight_dq_outputs(candidate):
        raise UsageError("the candidate holds no Q/DQ nodes: layerwise blame compares a quantized graph with FP32")
    shared = [o for n in fp32.graph.node for o in n.output if o and idx32.is_activation(o) and o in idx8.producer]
    pairs = [(t, t) for t in shared] + [(t, v) for t, v in views.items() if t in idx32.producer or t in idx32.graph_inputs]
    if not shared:
        raise UsageError(
            "the FP32 model and the candidate share no tensor names",
            hint="pass the model.simplified.onnx the INT8 model was made from",
        )
    acc = _accumulate(fp32, candidate, inputs, batch_size, shared, pairs, idx32.graph_inputs)
    result = Layerwise(int(len(inputs)))
    result.tensors = _tensor_errors(fp32, idx32, pairs, acc)
    result.layers = _layer_errors(fp32, candidate, idx32, views, acc)
    ranked = sorted(result.layers, key=lambda lay: (-lay.jump, lay.node))
    result.ranking = [lay.node for lay in ranked]
    if ranked:
        worst = ranked[0].jump
        result.suggested_keep_fp = [lay.keep_fp for lay in ranked[:SUGGEST_MAX] if lay.jump >= max(SUGGEST_FRACTION * worst, SUGGEST_FLOOR)]
    return result


_Pair = tuple[str, str]  # (FP32 tensor, the tensor compared with it in the candidate)


def _accumulate(
    fp32: onnx.ModelProto,
    candidate: onnx.ModelProto,
    inputs: np.ndarray,
    batch_size: int,
    shared: list[str],
    pairs: list[_Pair],
    graph_inputs: set[str],
) -> dict[_Pair, _Acc]:
    """Run both graphs batch by batch with the ``pairs``' tensors exposed; each pair's error statistics."""
    s32 = _session(fp32, shared)
    s8 = _session(candidate, sorted({v for _, v in pairs}))
    in32, in8 = s32.get_inputs()[0].name, s8.get_inputs()[0].name
    names8 = sorted({v for _, v in pairs})
    acc = {p: _Acc() for p in pairs}
    for s in range(0, len(inputs), batch_size):
        x = np.ascontiguousarray(inputs[s : s + batch_size], np.float32)
        got32 = dict(zip(shared, s32.run(shared, {in32: x}), strict=True))
        got8 = dict(zip(names8, s8.run(names8, {in8: x}), strict=True))
        for t in graph_inputs:
            got32[t] = x
        for t, v in pairs:
            acc[(t, v)].update(np.asarray(got32[t]), np.asarray(got8[v]))
    return acc


def _tensor_errors(fp32: onnx.ModelProto, idx32: GraphIndex, pairs: list[_Pair], acc: dict[_Pair, _Acc]) -> list[TensorError]:
    """The error of every compared tensor, in FP32 graph order (the plain tensor before its Q/DQ view)."""
    tensors = []
    for t, v in pairs:
        a = acc[(t, v)]
        producer = idx32.producer.get(t)
        tensors.append(
            TensorError(
                t,
                v,
                node_name(producer) if producer is not None else "(input)",
                v != t,
                a.rel_error,
                a.cos_sum / max(a.n, 1),
                a.cos_min,
                a.max_abs,
            )
        )
    order = {o: i for i, n in enumerate(fp32.graph.node) for o in n.output}
    tensors.sort(key=lambda e: (order.get(e.tensor, -1), e.quantized))
    return tensors


def _layer_errors(
    fp32: onnx.ModelProto, candidate: onnx.ModelProto, idx32: GraphIndex, views: dict[str, str], acc: dict[_Pair, _Acc]
) -> list[LayerError]:
    """Every node where quantization enters (a Q/DQ input or an INT8 weight), in graph order, with the error it adds."""
    err = {p: a.rel_error for p, a in acc.items()}  # (fp32 name, view) -> rel error
    weight_dq = _weight_dq_outputs(candidate)
    nodes8 = {node_name(n): n for n in candidate.graph.node}
    layers = []
    for n in fp32.graph.node:
        name = node_name(n)
        n8 = nodes8.get(name)
        if n8 is None or not n.output or (n.output[0], n.output[0]) not in acc:
            continue
        q_in = [t for t, t8 in zip(n.input, n8.input, strict=False) if t8 != t and views.get(t) == t8]
        w_q = any(t8 in weight_dq for t8 in n8.input)
        if not q_in and not w_q:
            continue
        upstream = max((err.get((t, t), 0.0) for t in n.input if idx32.is_activation(t)), default=0.0)
        out_acc = acc[(n.output[0], n.output[0])]
        out_err = out_acc.rel_error
        layers.append(
            LayerError(
                name,
                n.op_type,
                q_in,
                w_q,
                upstream,
                out_err,
                out_err - upstream,
                out_acc.cos_sum / max(out_acc.n, 1),
                keep_fp_pattern(name),
            )
        )
    return layers
