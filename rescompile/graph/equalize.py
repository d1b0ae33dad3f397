"""Cross-layer equalization and bias absorption (Nagel et al., ICCV 2019): pure functions over an ONNX graph.

A *pair* is ``Conv -> (Relu | nothing) -> Conv`` where the first Conv's output (and the ReLU's) feeds only
that path. Scaling output channel ``i`` of the first Conv by ``1/s_i`` and input channel ``i`` of the second
by ``s_i`` leaves the function unchanged (ReLU is positively homogeneous; zero padding stays zero), and with
``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r``: the channel's weight range, here ``max |w|``) both channels end up
with the range ``sqrt(r1_i * r2_i)``: the optimum of the paper's §4.1. Chains (a Conv that is the second of
one pair and the first of the next) are swept until no scale moves by more than a tolerance (bounded).

What is skipped, and why (each skip is recorded with its reason):

- a Conv output (or its ReLU's) read by anything else: a residual Add, a shortcut, a graph output;
- ``Clip(0, 6)`` (ReLU6) between the two: not positively homogeneous; scaling would move the clip point to
  ``6 / s_i``, a per-channel bound a scalar Clip cannot hold. Skipped, never approximated;
- weights that are not initializers, or are shared with another node; channel counts that do not match.

An *affine pair* is ``affine -> (Relu | nothing) -> Conv(s)``: a per-channel scale and shift (``Mul(gamma)`` with
an optional ``Add(beta)`` after it, as GroupNorm is exported: ``Reshape -> InstanceNormalization -> Reshape -> Mul ->
Add``; or the scale and bias inputs of a ``GroupNormalization`` (opset >= 21), ``InstanceNormalization`` or
``BatchNormalization`` node) whose output (or its ReLU's) is read only by Convs' data inputs, one or several (a
pre-activation block's conv1 and projection shortcut; depthwise included). ``gamma_c`` and ``beta_c`` are divided by
``s_c`` and input channel ``c`` of every reading Conv multiplied by ``s_c``: exact for the same reason. The first
side has no weights, so its range ``r1_c`` is the channel's range at the tensor the Convs read: measured on
calibration data by the caller (:mod:`rescompile.equalize`), or, without statistics, the paper's BatchNorm estimate
with the normalized input taken as N(0, 1): ``max(0, beta_c + 3 |gamma_c|)`` through a ReLU, ``|beta_c| + 3 |gamma_c|``
without. ``r2_c`` is ``max |w|`` of input channel ``c`` over all the reading Convs; ``s_c`` is eq. 9 as for Conv pairs.

Bias absorption (§4.1.2) moves ``c_i >= 0`` out of the first Conv's bias into the second's: with
``y_i >= c_i``, ``ReLU(y_i) = ReLU(y_i - c_i) + c_i``, so ``b1_i -= c_i`` and ``b2 += W2 · c``. It is exact
only where the second Conv has no padding (a zero-padded border would read ``-c_i`` instead of 0), so it is
done only there (typically the 1x1 Conv after a depthwise one). ``c`` comes from the caller: per-channel
statistics of the first Conv's output on calibration data (:mod:`rescompile.equalize`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from rescompile.graph.index import GraphIndex, node_name

MAX_SWEEPS = 100  # the paper's iteration converges in a few sweeps; this bounds odd graphs
TOLERANCE = 1e-4  # a sweep whose scales all lie within 1 +- this ends the iteration
RELU6 = (0.0, 6.0)
NORMS = ("GroupNormalization", "InstanceNormalization", "BatchNormalization")  # per-channel scale: input 1, bias: input 2


@dataclass(frozen=True)
class Pair:
    """Two Convs equalized together; ``activation`` between them: ``Relu`` or ``none``."""

    first: str  # node names
    second: str
    activation: str
    tensor: str  # the first Conv's output (before the ReLU): where absorption statistics are taken
    channels: int


@dataclass(frozen=True)
class Skipped:
    """A Conv -> ... -> Conv candidate left alone, with the reason."""

    first: str
    second: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"first": self.first, "second": self.second, "reason": self.reason}


@dataclass
class PairResult:
    """What equalization did to one pair: the cumulative scales' range and the absorbed bias."""

    pair: Pair
    scale_min: float = 1.0
    scale_max: float = 1.0
    absorbed: float = 0.0  # max c_i moved into the second Conv (0: none)
    absorption: str = "not tried"  # "done" | why not

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.pair.first,
            "second": self.pair.second,
            "activation": self.pair.activation,
            "channels": self.pair.channels,
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "absorption": self.absorption,
            "absorbed_max": self.absorbed,
        }


@dataclass(frozen=True)
class AffinePair:
    """A per-channel affine (``nodes``: ``Mul`` [+ ``Add``], or one normalization node) -> ``activation`` -> the Convs
    ``seconds`` (every reader of ``tensor``)."""

    nodes: tuple[str, ...]
    seconds: tuple[str, ...]
    activation: str  # "Relu" | "none"
    tensor: str  # what the Convs read (the ReLU's output, or the affine's): where r1 is measured
    channels: int
    rank: int  # of the tensor the Convs read (N, C, spatial...)
    scale: str  # the initializer holding gamma (Mul's constant, or the norm's scale)
    shift: str | None  # beta (Add's constant, or the norm's bias); None: a Mul without Add


@dataclass
class AffineResult:
    """What equalization did to one affine pair: the cumulative scales' range, and where ``r1`` came from."""

    pair: AffinePair
    range_source: str  # "calibration" | "data-free estimate"
    scale_min: float = 1.0
    scale_max: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "affine": list(self.pair.nodes),
            "seconds": list(self.pair.seconds),
            "activation": self.pair.activation,
            "channels": self.pair.channels,
            "range": self.range_source,
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
        }


@dataclass
class Equalization:
    """The equalized model and its record."""

    model: onnx.ModelProto
    pairs: list[PairResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = True
    affine: list[AffineResult] = field(default_factory=list)

    @property
    def touched(self) -> list[str]:
        """Every Conv whose weights changed, in pair order (Conv pairs, then affine pairs), without repeats."""
        out: list[str] = []
        names = [n for p in self.pairs for n in (p.pair.first, p.pair.second)] + [n for a in self.affine for n in a.pair.seconds]
        for n in names:
            if n not in out:
                out.append(n)
        return out

    @property
    def affines(self) -> list[str]:
        """Every affine node (Mul, Add, normalization) whose scale and shift changed, in pair order."""
        return [n for a in self.affine for n in a.pair.nodes]


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _clip_bounds(node: onnx.NodeProto, idx: GraphIndex) -> tuple[float | None, float | None]:
    if len(node.input) > 1:  # opset >= 11: min and max are optional inputs
        lo = idx.constant_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = idx.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))
    return _attr(node, "min", None), _attr(node, "max", None)


def _sole_consumer(idx: GraphIndex, tensor: str) -> tuple[onnx.NodeProto, int] | None:
    """The one node input reading ``tensor``; None when several read it or it is a graph output."""
    readers = idx.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in idx.graph_outputs:
        return None
    return readers[0]


def _weight_users(g: onnx.GraphProto) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return uses


def _conv_readers(idx: GraphIndex, out: str) -> tuple[onnx.NodeProto | None, str, list[onnx.NodeProto]]:
    """What reads ``out`` as a pair's second side: its one activation (Relu or Clip, when it is the only
    reader), the tensor after it (``out`` without one), and the Convs reading that tensor as their data."""
    readers = idx.consumers.get(out, [])
    act: onnx.NodeProto | None = None
    tail = out
    if len(readers) == 1 and readers[0][0].op_type in ("Relu", "Clip") and readers[0][1] == 0:
        act = readers[0][0]
        tail = act.output[0]
        readers = idx.consumers.get(tail, [])
    return act, tail, [n for n, i in readers if n.op_type == "Conv" and i == 0]


def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], list[Skipped]]:
    """Every equalizable Conv pair of ``model``'s main graph in graph order, and the candidates skipped (with why).

    A candidate is a Conv whose output reaches another Conv's data input directly or through one Relu or Clip.
    """
    g = model.graph
    idx = GraphIndex.build(g)
    uses = _weight_users(g)
    pairs: list[Pair] = []
    skipped: list[Skipped] = []
    for conv in g.node:
        if conv.op_type != "Conv":
            continue
        out = conv.output[0]
        act, tail, seconds = _conv_readers(idx, out)
        if not seconds:
            continue
        first, second = node_name(conv), node_name(seconds[0])
        reason = _why_not(idx, uses, conv, act, seconds[0], out, tail)
        if reason is not None:
            skipped.extend(Skipped(first, node_name(s), reason) for s in seconds)
            continue
        w1 = idx.constant_value(conv.input[1])
        pairs.append(Pair(first, second, "none" if act is None else "Relu", out, int(w1.shape[0])))
    return pairs, skipped


def _why_not(
    idx: GraphIndex, uses: Mapping[str, int], conv: onnx.NodeProto, act: onnx.NodeProto | None, second: onnx.NodeProto, out: str, tail: str
) -> str | None:
    """Why ``conv -> act -> second`` cannot be equalized exactly; None when it can."""
    if act is not None:
        if out in idx.graph_outputs:
            return "the first Conv's output is a graph output"
        if act.op_type == "Clip":
            lo, hi = _clip_bounds(act, idx)
            if (lo, hi) == RELU6:
                return "Clip(0, 6) (ReLU6) is not positively homogeneous: scaling would move its clip point per channel"
            return f"Clip({lo}, {hi}) between the Convs is not positively homogeneous"
    if _sole_consumer(idx, tail) is None:
        what = "its ReLU's output" if act is not None else "the first Conv's output"
        return f"{what} has other consumers (a residual Add, a shortcut or a graph output)"
    for c in (conv, second):
        if c.input[1] not in idx.initializers or uses.get(c.input[1], 0) != 1:
            return f"{node_name(c)}: the weight is not an initializer of its own"
        if len(c.input) > 2 and c.input[2] and (c.input[2] not in idx.initializers or uses.get(c.input[2], 0) != 1):
            return f"{node_name(c)}: the bias is not an initializer of its own"
    w1, w2 = idx.constant_value(conv.input[1]), idx.constant_value(second.input[1])
    group = int(_attr(second, "group", 1))
    if w1.shape[0] != w2.shape[1] * group or w2.shape[0] % group:
        return "the channel counts do not match"
    return None


def _channel_vector(value: np.ndarray | None, rank: int) -> np.ndarray | None:
    """``value`` as one number per channel (length C, or 1 for all) when it broadcasts per channel against an
    ``N, C, ...`` tensor of ``rank`` dimensions; None when it varies along another axis."""
    if value is None or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if shape[0] != 1 or any(d != 1 for d in shape[2:]):
        return None
    return np.asarray(value).reshape(-1)


def _affine_chain(idx: GraphIndex, node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str, str | None] | None:
    """The affine starting at ``node`` (its nodes, gamma's and beta's names): ``Mul(x, const) [-> Add(., const)]``, or
    a normalization node's scale and bias; None when ``node`` starts none."""
    if node.op_type in NORMS and len(node.input) > 2 and node.input[1] and node.input[2]:
        return [node], node.input[1], node.input[2]
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    const = [i for i in node.input if idx.is_constant(i)]
    if len(const) != 1 or not idx.is_activation(node.input[0] if const[0] == node.input[1] else node.input[1]):
        return None
    readers = idx.consumers.get(node.output[0], [])
    if len(readers) == 1 and readers[0][0].op_type == "Add" and node.output[0] not in idx.graph_outputs:
        add = readers[0][0]
        other = add.input[1 - readers[0][1]]
        if len(add.input) == 2 and idx.is_constant(other):
            return [node, add], const[0], other
    return [node], const[0], None


def find_affine_pairs(model: onnx.ModelProto) -> tuple[list[AffinePair], list[Skipped]]:
    """Every equalizable ``affine -> (Relu | nothing) -> Conv(s)`` of ``model``'s main graph, and the candidates
    skipped (with why). A candidate is an affine whose output (or its ReLU's or Clip's) a Conv's data input reads."""
    g = model.graph
    idx = GraphIndex.build(g)
    uses = _weight_users(g)
    pairs: list[AffinePair] = []
    skipped: list[Skipped] = []
    for node in g.node:
        chain = _affine_chain(idx, node)
        if chain is None:
            continue
        nodes, scale, shift = chain
        out = nodes[-1].output[0]
        act, tail, seconds = _conv_readers(idx, out)
        if not seconds:
            continue
        reason = _why_not_affine(idx, uses, nodes, act, seconds, scale, shift, tail)
        if reason is not None:
            skipped.extend(Skipped(node_name(nodes[0]), node_name(c), reason) for c in seconds)
            continue
        w = idx.constant_value(seconds[0].input[1])
        channels = int(w.shape[1]) * int(_attr(seconds[0], "group", 1))
        act_name = "none" if act is None else "Relu"
        names = tuple(node_name(n) for n in nodes)
        pairs.append(AffinePair(names, tuple(node_name(c) for c in seconds), act_name, tail, channels, w.ndim, scale, shift))
    return pairs, skipped


def _why_not_affine(
    idx: GraphIndex,
    uses: Mapping[str, int],
    nodes: list[onnx.NodeProto],
    act: onnx.NodeProto | None,
    seconds: list[onnx.NodeProto],
    scale: str,
    shift: str | None,
    tail: str,
) -> str | None:
    """Why ``nodes -> act -> seconds`` cannot be equalized exactly; None when it can."""
    if any(n.output[0] in idx.graph_outputs for n in nodes):
        return "the affine's output is a graph output"
    if act is not None and act.op_type == "Clip":
        lo, hi = _clip_bounds(act, idx)
        if (lo, hi) == RELU6:
            return "Clip(0, 6) (ReLU6) is not positively homogeneous: scaling would move its clip point per channel"
        return f"Clip({lo}, {hi}) after the affine is not positively homogeneous"
    readers = idx.consumers.get(tail, [])
    if tail in idx.graph_outputs or any(n.op_type != "Conv" or i != 0 for n, i in readers):
        what = "its ReLU's output" if act is not None else "the affine's output"
        others = sorted(
            {n.op_type for n, i in readers if n.op_type != "Conv" or i != 0} | ({"graph output"} if tail in idx.graph_outputs else set())
        )
        return f"{what} is also read by {', '.join(others)}: rescaling it would change that reader"
    for name in (scale, shift):
        if name is not None and (name not in idx.initializers or uses.get(name, 0) != 1):
            return f"{name}: the affine's scale or shift is not an initializer of its own"
    for c in seconds:
        if c.input[1] not in idx.initializers or uses.get(c.input[1], 0) != 1:
            return f"{node_name(c)}: the weight is not an initializer of its own"
    shapes = [(int(w.shape[1]) * int(_attr(c, "group", 1)), w.ndim) for c in seconds for w in [idx.constant_value(c.input[1])]]
    if len(set(shapes)) != 1:
        return "the reading Convs do not agree on the channel count"
    channels, rank = shapes[0]
    for name in (scale, shift):
        if name is None:
            continue
        value = idx.constant_value(name)
        vec = value.reshape(-1) if nodes[0].op_type in NORMS and value.ndim == 1 else _channel_vector(value, rank)
        if vec is None or vec.size not in ((channels,) if nodes[0].op_type in NORMS else (1, channels)):
            return f"{name} of shape {list(value.shape)} is not one value per channel ({channels} channels)"
    return None


def affine_ranges(idx: GraphIndex, pair: AffinePair) -> np.ndarray:
    """The data-free ``r1`` of an affine pair: the paper's BatchNorm estimate with the normalized input taken as
    N(0, 1), ``max(0, beta + 3 |gamma|)`` through a ReLU (0: a channel that never fires, left at scale 1), else
    ``|beta| + 3 |gamma|``."""
    gamma, beta = _affine_params(idx, pair)
    return np.maximum(beta + 3 * np.abs(gamma), 0.0) if pair.activation == "Relu" else np.abs(beta) + 3 * np.abs(gamma)


def _affine_params(idx: GraphIndex, pair: AffinePair) -> tuple[np.ndarray, np.ndarray]:
    """gamma and beta of ``pair``, float64, one value per channel (beta 0 without a shift)."""
    gamma = np.broadcast_to(np.asarray(idx.constant_value(pair.scale), np.float64).reshape(-1), (pair.channels,))
    beta = (
        np.zeros(pair.channels)
        if pair.shift is None
        else np.broadcast_to(np.asarray(idx.constant_value(pair.shift), np.float64).reshape(-1), (pair.channels,))
    )
    return gamma, beta


def _divide_affine(idx: GraphIndex, pair: AffinePair, s: np.ndarray) -> None:
    """gamma and beta of ``pair`` divided by ``s`` per channel, written back in their own dtype; a constant shared by
    all channels (one value) becomes one per channel, shaped to broadcast the same way."""
    norms = {node_name(n) for n in idx.graph.node if n.op_type in NORMS}
    for name in (pair.scale, pair.shift):
        if name is None:
            continue
        old = np.asarray(idx.constant_value(name))
        vec = np.broadcast_to(old.astype(np.float64).reshape(-1), (pair.channels,)) / s
        if pair.nodes[0] in norms:
            shape: tuple[int, ...] = (pair.channels,)
        else:  # a Mul/Add constant broadcast against the N, C, ... tensor: channel on axis 1 of it, rank kept if it held N
            ones = [1] * (pair.rank - 2)
            shape = (1, pair.channels, *ones) if old.ndim == pair.rank else (pair.channels, *ones)
        idx.initializers[name].CopyFrom(numpy_helper.from_array(vec.reshape(shape).astype(old.dtype), name))


def _in_channel_view(w2: np.ndarray, group: int) -> np.ndarray:
    """``w2`` rearranged as (input channel, everything that reads it), for a Conv with ``group`` groups."""
    cout, cin_g = w2.shape[0], w2.shape[1]
    per = cout // group
    # (group, out per group, in per group, k...) -> (group, in per group, out per group * k...)
    v = w2.reshape(group, per, cin_g, -1).transpose(0, 2, 1, 3)
    return v.reshape(group * cin_g, -1)


def scale_input_channels(w2: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    """``w2`` (a Conv weight with ``group`` groups) with input channel ``i`` multiplied by ``s[i]``."""
    cout, cin_g = w2.shape[0], w2.shape[1]
    per = cout // group
    v = w2.reshape(group, per, cin_g, -1) * s.reshape(group, 1, cin_g, 1)
    return v.reshape(w2.shape)


def channel_ranges(model: onnx.ModelProto, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """``(r1, r2)``: max |w| per output channel of the first Conv and per input channel of the second."""
    idx = GraphIndex.build(model.graph)
    nodes = {node_name(n): n for n in model.graph.node}
    a, b = nodes[pair.first], nodes[pair.second]
    w1 = np.asarray(idx.constant_value(a.input[1]), np.float64)
    w2 = np.asarray(idx.constant_value(b.input[1]), np.float64)
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
    r2 = np.abs(_in_channel_view(w2, int(_attr(b, "group", 1)))).max(axis=1)
    return r1, r2


class _Weights:
    """The float64 weights and biases of the pairs' Convs, edited in place and written back once."""

    def __init__(self, model: onnx.ModelProto, convs: Iterable[str]) -> None:
        self.model = model
        self.idx = GraphIndex.build(model.graph)
        self.nodes = {node_name(n): n for n in model.graph.node}
        self.w: dict[str, np.ndarray] = {}
        self.b: dict[str, np.ndarray] = {}
        self.dtype: dict[str, Any] = {}
        for name in convs:
            if name in self.w:
                continue
            n = self.nodes[name]
            w = np.asarray(self.idx.constant_value(n.input[1]))
            self.dtype[name] = w.dtype
            self.w[name] = w.astype(np.float64)
            has_bias = len(n.input) > 2 and n.input[2]
            self.b[name] = np.asarray(self.idx.constant_value(n.input[2]), np.float64) if has_bias else np.zeros(w.shape[0])

    def group(self, name: str) -> int:
        return int(_attr(self.nodes[name], "group", 1))

    def ranges(self, p: Pair) -> tuple[np.ndarray, np.ndarray]:
        w1, w2 = self.w[p.first], self.w[p.second]
        r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
        r2 = np.abs(_in_channel_view(w2, self.group(p.second))).max(axis=1)
        return r1, r2

    def input_ranges(self, convs: Iterable[str]) -> np.ndarray:
        """max |w| per input channel over all of ``convs`` (Convs reading one tensor)."""
        return np.max([np.abs(_in_channel_view(self.w[c], self.group(c))).max(axis=1) for c in convs], axis=0)

    def scale(self, p: Pair, s: np.ndarray) -> None:
        w1 = self.w[p.first]
        self.w[p.first] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
        self.b[p.first] = self.b[p.first] / s
        self.scale_inputs(p.second, s)

    def scale_inputs(self, conv: str, s: np.ndarray) -> None:
        self.w[conv] = scale_input_channels(self.w[conv], self.group(conv), s)

    def absorb(self, p: Pair, c: np.ndarray) -> None:
        """``b1 -= c``, ``b2 += sum over the inputs it reads of W2 * c`` (the second Conv has no padding)."""
        w2, group = self.w[p.second], self.group(p.second)
        cout, cin_g = w2.shape[0], w2.shape[1]
        per = cout // group
        summed = w2.reshape(group, per, cin_g, -1).sum(axis=3)  # (group, out per group, in per group)
        shift = np.einsum("gpi,gi->gp", summed, c.reshape(group, cin_g)).reshape(cout)
        self.b[p.first] = self.b[p.first] - c
        self.b[p.second] = self.b[p.second] + shift

    def write(self) -> None:
        g = self.model.graph
        for name, w in self.w.items():
            n = self.nodes[name]
            self.idx.initializers[n.input[1]].CopyFrom(numpy_helper.from_array(w.astype(self.dtype[name]), n.input[1]))
            b = self.b[name].astype(self.dtype[name])
            if len(n.input) > 2 and n.input[2]:
                self.idx.initializers[n.input[2]].CopyFrom(numpy_helper.from_array(b, n.input[2]))
            elif np.any(b != 0):  # absorption gave a bias-free Conv a bias
                attach_bias(g, n, b)


def _fresh(g: onnx.GraphProto, base: str) -> str:
    used = {t.name for t in g.initializer} | {x for n in g.node for x in (*n.input, *n.output)}
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    return name


def attach_bias(g: onnx.GraphProto, node: onnx.NodeProto, values: np.ndarray) -> onnx.TensorProto:
    """Give a bias-free ``node`` (Conv/Gemm) a bias initializer holding ``values``, under a name ``g`` does not
    use yet (``<weight>_bias``); returns the initializer added to ``g``."""
    t = numpy_helper.from_array(values, _fresh(g, f"{node.input[1]}_bias"))
    g.initializer.append(t)
    if len(node.input) == 2:
        node.input.append(t.name)
    else:
        node.input[2] = t.name
    return t


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i * r2_i) / r2_i`` (the paper's eq. 9); 1 where a channel is all zero on either side."""
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1, dtype=np.float64)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


def equalize(
    model: onnx.ModelProto,
    *,
    max_sweeps: int = MAX_SWEEPS,
    tolerance: float = TOLERANCE,
    ranges: Mapping[str, np.ndarray] | None = None,
) -> Equalization:
    """Cross-layer equalization of every pair of :func:`find_pairs` and :func:`find_affine_pairs`, swept over
    chains until it converges.

    Args:
        model: the (BatchNorm-folded) model.
        max_sweeps, tolerance: when the sweeps stop.
        ranges: per tensor an affine pair's Convs read, ``max |x|`` of each channel on calibration data (its ``r1``);
            a pair without it takes the data-free estimate (:func:`affine_ranges`).

    Returns:
        A new model (the input is not changed) and the record: per pair, the range of the cumulative scales.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    pairs, skipped = find_pairs(model)
    affine, affine_skipped = find_affine_pairs(model)
    skipped = skipped + affine_skipped
    results = [PairResult(p) for p in pairs]
    measured = dict(ranges or {})
    affine_results = [AffineResult(a, "calibration" if a.tensor in measured else "data-free estimate") for a in affine]
    if not pairs and not affine:
        return Equalization(model, results, skipped, 0, True)
    idx = GraphIndex.build(model.graph)
    r1_affine = [
        np.asarray(measured[a.tensor], np.float64).reshape(a.channels) if a.tensor in measured else affine_ranges(idx, a) for a in affine
    ]
    weights = _Weights(model, [n for p in pairs for n in (p.first, p.second)] + [n for a in affine for n in a.seconds])
    total = [np.ones(p.channels) for p in pairs]
    total_affine = [np.ones(a.channels) for a in affine]
    sweeps, converged = 0, False
    while sweeps < max_sweeps and not converged:
        sweeps += 1
        moved = 0.0
        for k, p in enumerate(pairs):
            s = equalization_scales(*weights.ranges(p))
            weights.scale(p, s)
            total[k] *= s
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        for k, a in enumerate(affine):  # r1 moves with the scales already applied: the tensor is divided by them
            s = equalization_scales(r1_affine[k] / total_affine[k], weights.input_ranges(a.seconds))
            for conv in a.seconds:
                weights.scale_inputs(conv, s)
            total_affine[k] *= s
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        converged = moved <= math.log1p(tolerance)
    weights.write()
    for a, t in zip(affine, total_affine, strict=True):
        _divide_affine(idx, a, t)
    for r, t in zip(results, total, strict=True):
        r.scale_min, r.scale_max = float(t.min()), float(t.max())
    for ar, t in zip(affine_results, total_affine, strict=True):
        ar.scale_min, ar.scale_max = float(t.min()), float(t.max())
    return Equalization(model, results, skipped, sweeps, converged, affine_results)


def absorbable(model: onnx.ModelProto, pair: Pair) -> str | None:
    """Why bias absorption cannot be exact for ``pair`` (None: it can)."""
    if pair.activation != "Relu":
        return "no ReLU between the Convs"
    second = next(n for n in model.graph.node if node_name(n) == pair.second)
    pads = _attr(second, "pads", None)
    auto = _attr(second, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID") or (pads is not None and any(int(v) for v in pads)):
        return "the second Conv pads with zeros (the border would read -c)"
    return None


def absorb_biases(eq: Equalization, shifts: Mapping[str, np.ndarray]) -> Equalization:
    """Absorb ``shifts[pair.tensor]`` (``c >= 0`` per channel) of each absorbable pair into its second Conv.

    ``c_i`` must lie at or below every value of channel ``i`` of the first Conv's output (the caller takes it from
    calibration statistics), so that ``ReLU(y - c) + c == ReLU(y)``; a channel with ``c_i <= 0`` is left alone.
    Returns a new Equalization (the input's model is not changed).
    """
    model = onnx.ModelProto.FromString(eq.model.SerializeToString())
    todo = []
    for r in eq.pairs:
        why = absorbable(model, r.pair)
        c = shifts.get(r.pair.tensor)
        if why is None and c is None:
            why = "no statistics for the first Conv's output"
        if why is None and c is not None and not np.any(np.asarray(c) > 0):
            why = "no channel stays above 0 on the calibration data"
        todo.append((r, why, c))
    pairs = [r.pair for r, why, _ in todo if why is None]
    weights = _Weights(model, [n for p in pairs for n in (p.first, p.second)]) if pairs else None
    results = []
    for r, why, c in todo:
        out = PairResult(r.pair, r.scale_min, r.scale_max)
        if why is None and weights is not None and c is not None:
            cc = np.maximum(np.asarray(c, np.float64), 0.0)
            weights.absorb(r.pair, cc)
            out.absorbed, out.absorption = float(cc.max()), "done"
        else:
            out.absorption = str(why)
        results.append(out)
    if weights is not None:
        weights.write()
    return Equalization(model, results, eq.skipped, eq.sweeps, eq.converged, eq.affine)
