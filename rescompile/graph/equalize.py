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

Bias absorption (§4.1.2) moves ``c_i >= 0`` out of the first Conv's bias into the second's: with
``y_i >= c_i``, ``ReLU(y_i) = ReLU(y_i - c_i) + c_i``, so ``b1_i -= c_i`` and ``b2 += W2 · c``. It is exact
only where the second Conv has no padding (a zero-padded border would read ``-c_i`` instead of 0), so it is
done only there (typically the 1x1 Conv after a depthwise one). ``c`` comes from the caller: per-channel
statistics of the first Conv's output on calibration data (:mod:`rescompile.equalize`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from rescompile.graph.index import GraphIndex, node_name

MAX_SWEEPS = 100  # the paper's iteration converges in a few sweeps; this bounds odd graphs
TOLERANCE = 1e-4  # a sweep whose scales all lie within 1 +- this ends the iteration
RELU6 = (0.0, 6.0)


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


@dataclass
class Equalization:
    """The equalized model and its record."""

    model: onnx.ModelProto
    pairs: list[PairResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = True

    @property
    def touched(self) -> list[str]:
        """Every Conv whose weights changed, in pair order, without repeats."""
        out: list[str] = []
        for p in self.pairs:
            for n in (p.pair.first, p.pair.second):
                if n not in out:
                    out.append(n)
        return out


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
        readers = idx.consumers.get(out, [])
        act: onnx.NodeProto | None = None
        tail = out
        if len(readers) == 1 and readers[0][0].op_type in ("Relu", "Clip") and readers[0][1] == 0:
            act = readers[0][0]
            tail = act.output[0]
            readers = idx.consumers.get(tail, [])
        seconds = [n for n, i in readers if n.op_type == "Conv" and i == 0]
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

    def __init__(self, model: onnx.ModelProto, pairs: list[Pair]) -> None:
        self.model = model
        self.idx = GraphIndex.build(model.graph)
        self.nodes = {node_name(n): n for n in model.graph.node}
        self.w: dict[str, np.ndarray] = {}
        self.b: dict[str, np.ndarray] = {}
        self.dtype: dict[str, Any] = {}
        for p in pairs:
            for name in (p.first, p.second):
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

    def scale(self, p: Pair, s: np.ndarray) -> None:
        w1 = self.w[p.first]
        self.w[p.first] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
        self.b[p.first] = self.b[p.first] / s
        self.w[p.second] = scale_input_channels(self.w[p.second], self.group(p.second), s)

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
                bias = _fresh(g, f"{n.input[1]}_bias")
                g.initializer.append(numpy_helper.from_array(b, bias))
                if len(n.input) == 2:
                    n.input.append(bias)
                else:
                    n.input[2] = bias


def _fresh(g: onnx.GraphProto, base: str) -> str:
    used = {t.name for t in g.initializer} | {x for n in g.node for x in (*n.input, *n.output)}
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    return name


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i * r2_i) / r2_i`` (the paper's eq. 9); 1 where a channel is all zero on either side."""
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1, dtype=np.float64)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


def equalize(model: onnx.ModelProto, *, max_sweeps: int = MAX_SWEEPS, tolerance: float = TOLERANCE) -> Equalization:
    """Cross-layer equalization of every pair of :func:`find_pairs`, swept over chains until it converges.

    Returns:
        A new model (the input is not changed) and the record: per pair, the range of the cumulative scales.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    pairs, skipped = find_pairs(model)
    results = [PairResult(p) for p in pairs]
    if not pairs:
        return Equalization(model, results, skipped, 0, True)
    weights = _Weights(model, pairs)
    total = [np.ones(p.channels) for p in pairs]
    sweeps, converged = 0, False
    while sweeps < max_sweeps and not converged:
        sweeps += 1
        moved = 0.0
        for k, p in enumerate(pairs):
            s = equalization_scales(*weights.ranges(p))
            weights.scale(p, s)
            total[k] *= s
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        converged = moved <= math.log1p(tolerance)
    weights.write()
    for r, t in zip(results, total, strict=True):
        r.scale_min, r.scale_max = float(t.min()), float(t.max())
    return Equalization(model, results, skipped, sweeps, converged)


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
    weights = _Weights(model, pairs) if pairs else None
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
    return Equalization(model, results, eq.skipped, eq.sweeps, eq.converged)
