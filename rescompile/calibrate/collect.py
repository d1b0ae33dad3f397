"""Streaming activation statistics from one ONNX Runtime pass: exact min/max and a signed histogram.

Each calibrated tensor keeps a fixed-size state whatever the number of images: its running
min and max, and ``2 * bins`` counters over ``[-edge, edge)``. ``edge`` is a power of two,
so when a larger value arrives the histogram grows by merging groups of 2, 4, 8 ... bins —
old counts stay exact, never re-estimated. The signed histogram serves symmetric ranges
(folded to ``|x|``) and asymmetric ones (min/max) from the same pass.

The model runs once over the data with every calibrated tensor exposed as an output. Outputs
are written into two preallocated buffer sets (ONNX Runtime I/O binding) while a worker
thread histograms the previous chunk, so model and statistics overlap and memory stays at
two chunks of activations, sized by ``memory_budget``. Min, max and count see every value;
the histogram of a large tensor takes every k-th value (at most ``sample`` per image, the
phase rotating from image to image; ``sample=None`` takes all), which keeps the statistics cheap
next to the forward pass (measured in benchmarks/calibration.py) at millions of values per
tensor over a calibration set.

The statistics are a function of the set of images alone, never of how they were batched or
split, so shards collected apart merge exactly (:mod:`rescompile.calibrate.merge`): a value's
bin is ``floor(x * bins / edge)`` computed exactly (float64), so binning at a small edge and
merging bins later equals binning at the final edge; the sampled values of image ``n`` are
fixed by ``n`` (phase ``n mod k``), not by the run that saw it; zeros are stored as +0.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from rescompile.errors import UsageError

DEFAULT_BINS = 2048  # per side of zero: |x| gets 2048 bins, as TensorRT's entropy calibration
MIN_EDGE = 2.0**-60
_SLICE = 1 << 18  # elements histogrammed per step: keeps the index buffers in cache
DEFAULT_MEMORY_BUDGET = 64 << 20  # bytes of exposed activations per buffer set (small runs measured faster)
# Histogram values per tensor per image: larger tensors are histogrammed on every k-th value (the phase
# rotates from image to image); min, max and count always see every value. None: every value. 4,096 values x 512
# images is 2M values per tensor, ample for 2,048 bins and the 99.99th percentile; at 16,384 the statistics
# thread took twice the CPU on ResNet-50 (200 vs 103 ms per 32 images), taken from the forward pass on 2 cores.
DEFAULT_SAMPLE = 1 << 12


@dataclass(frozen=True)
class CollectSettings:
    """How the statistics are collected (never what they are: every setting gives the same ranges but ``bins`` and
    ``sample``, which are part of the calibration cache key).

    Attributes:
        batch_size: images read and preprocessed per batch (chunks of a batch are sized by ``memory_budget``).
        bins: histogram bins per side of zero (a power of two >= 256).
        threads: ONNX Runtime intra-op threads (default: all cores).
        memory_budget: bytes of exposed activations per chunk (two chunks are in flight).
        sample: histogram at most this many values per tensor per image (every k-th value; min/max see all
            values); None histograms every value.
    """

    batch_size: int = 64
    bins: int = DEFAULT_BINS
    threads: int | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    sample: int | None = DEFAULT_SAMPLE

    def check(self) -> None:
        """UsageError for bins that are not a power of two >= 256, or a sample below 1."""
        if self.bins < 256 or self.bins & (self.bins - 1):
            raise UsageError(f"histogram bins must be a power of two >= 256, not {self.bins}")
        if self.sample is not None and self.sample < 1:
            raise UsageError(f"sample must be a positive number of values per image, not {self.sample}")


class Workspace:
    """Scratch buffers for histogramming, reused across tensors and batches (one per thread)."""

    def __init__(self, size: int = _SLICE) -> None:
        self.f = np.empty(size, np.float64)  # exact: x * 2**k and its floor need no rounding in float64
        self.i = np.empty(size, np.intp)


@dataclass
class TensorStats:
    """Running statistics of one tensor: exact min/max/count and a signed histogram over [-edge, edge)."""

    name: str
    bins: int = DEFAULT_BINS
    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # 2 * bins counts
    edge: float = 0.0
    hist_count: int = 0  # values in the histogram (every ``stride``-th value of large tensors)
    runs: int = 0  # images seen (the sampling phase of the next image is ``runs mod stride``)
    nonnegative: bool = False  # produced by Relu: the minimum is 0 as soon as one value is 0
    graph_input: bool = False  # the model's input: preprocessed data, not an activation (see ranges.entropy_rule)

    def update(self, x: np.ndarray, work: Workspace | None = None, stride: int = 1, first: int | None = None) -> None:
        """Add the values of ``x`` (batch-major: one row per image); min/max see every value, the histogram
        every ``stride``-th value of each image, from offset ``n mod stride`` for image ``n``.

        Args:
            first: the index of ``x``'s first image in the whole data set (default: the images seen so far),
                which fixes the sampled values whatever the batching or sharding.

        Raises:
            UsageError: ``x`` holds NaN or Inf (the tensor is named).
        """
        flat = x.reshape(-1)
        if flat.size == 0:
            return
        first = self.runs if first is None else first
        sample = _sampled(x, stride, first) if stride > 1 else flat
        hi = float(flat.max()) + 0.0  # NaN propagates through max; + 0.0 makes -0.0 a +0.0 (same bytes in any order)
        lo = float(sample.min()) if self.nonnegative else math.nan
        if lo != 0.0:  # a Relu output with a 0 in the sample has minimum 0 exactly; otherwise look at every value
            lo = float(flat.min())
        lo += 0.0
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise UsageError(
                f"activation {self.name!r} holds NaN or Inf during calibration",
                hint="check the input data and preprocessing; the model overflows on it",
            )
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += flat.size
        flat = sample
        self.runs = max(self.runs, first + (len(x) if x.ndim > 1 else 1))
        self.hist_count += flat.size
        self._fit(max(abs(lo), abs(hi)))
        work = work or Workspace()
        b = self.bins
        scale = b / self.edge  # a power of two: x * scale is exact in float64, and so is its floor
        acc = np.zeros(2 * b, np.int64)
        for s in range(0, flat.size, work.f.size):
            part = flat[s : s + work.f.size]
            f, i = work.f[: part.size], work.i[: part.size]
            np.multiply(part, scale, out=f)
            np.floor(f, out=f)  # in [-b, b): |x| < edge
            np.add(f, float(b), out=i, casting="unsafe")  # a whole number already: the cast is exact
            acc += np.bincount(i, minlength=2 * b)
        self.hist += acc

    def _fit(self, amax: float) -> None:
        """Make ``edge`` a power of two strictly above ``amax``, merging bins when it grows."""
        need = math.ldexp(1.0, math.frexp(max(amax, MIN_EDGE))[1])  # 2**e > amax
        if self.hist.size == 0:
            self.hist = np.zeros(2 * self.bins, np.int64)
            self.edge = need
        elif need > self.edge:
            self.hist = rebin(self.hist, int(round(need / self.edge)))
            self.edge = need

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    def abs_hist(self) -> np.ndarray:
        """Counts of ``|x|`` in ``bins`` bins over [0, edge)."""
        b = self.bins
        return self.hist[b:] + self.hist[:b][::-1]

    @property
    def width(self) -> float:
        return self.edge / self.bins


def _sampled(x: np.ndarray, stride: int, first: int) -> np.ndarray:
    """Every ``stride``-th value of each image of ``x``, image ``first + j`` from offset ``(first + j) mod stride``."""
    if x.ndim < 2:  # not batch-major: one sample of the whole tensor
        return x.reshape(-1)[first % stride :: stride]
    rows = x.reshape(len(x), -1)
    per = rows.shape[1] // stride  # values per image (the same for every phase)
    if per == 0:
        return rows[:, :0].reshape(-1)
    phase = (first + np.arange(len(x))) % stride
    cols = phase[:, None] + stride * np.arange(per)[None, :]
    return rows[np.arange(len(x))[:, None], cols].reshape(-1)


def rebin(hist: np.ndarray, factor: int) -> np.ndarray:
    """A signed histogram over [-e, e) as one over [-factor*e, factor*e): groups of ``factor`` bins merge."""
    n = hist.size
    b = n // 2
    out = np.zeros(n, np.int64)
    if factor >= b:
        out[b - 1] = hist[:b].sum()
        out[b] = hist[b:].sum()
        return out
    g = b // factor
    out[b - g : b] = hist[:b].reshape(g, factor).sum(axis=1)
    out[b : b + g] = hist[b:].reshape(g, factor).sum(axis=1)
    return out


class InputWatch:
    """Min/max/count of the model inputs as they stream by (when the input itself is not calibrated).

    One per calibration run: the single-process run and each Ray shard (calibrate/on_ray.py) watch alike.
    """

    def __init__(self) -> None:
        self.stats = TensorStats("input")

    def watch(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for x in batches:
            if x.size:
                lo, hi = float(np.min(x)), float(np.max(x))
                self.stats.min, self.stats.max = min(self.stats.min, lo), max(self.stats.max, hi)
                self.stats.count += int(x.size)
            yield x


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names``."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in out.graph.output}
    for n in names:
        if n not in existing:
            out.graph.output.append(onnx.ValueInfoProto(name=n))
    return out


def probe_bytes(model_bytes: bytes, names: Iterable[str]) -> bytes:
    """Serialized ``model`` that also returns ``names``, without copying the model: protobuf merges a second
    message's repeated fields into the first, so the extra graph outputs are simply appended as bytes."""
    extra = onnx.ModelProto(graph=onnx.GraphProto(output=[onnx.ValueInfoProto(name=n) for n in names]))
    return model_bytes + extra.SerializeToString()


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float activation of ``model``: the graph input and each node output (for full TensorRT caches)."""
    inits = {t.name for t in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]
    return [n for n in names if types.get(n, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]


def _check_tensors(model: onnx.ModelProto, tensors: list[str]) -> None:
    known = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise UsageError(
            f"the model has no tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            hint="calibrate the simplified model the placement plan was made for",
        )


class _Buffers:
    """One set of output buffers for up to ``rows`` images, bound to the session by I/O binding."""

    def __init__(self, per_image: dict[str, tuple[int, ...]], rows: int) -> None:
        self.per_image = per_image
        self.flat = {t: np.empty(rows * int(np.prod(s, dtype=np.int64)), np.float32) for t, s in per_image.items()}

    def views(self, n: int) -> dict[str, np.ndarray]:
        return {t: self.flat[t][: n * int(np.prod(s, dtype=np.int64))].reshape(n, *s) for t, s in self.per_image.items()}


def collect_stats(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[np.ndarray],
    settings: CollectSettings | None = None,
    *,
    on_batch: Callable[[int], None] | None = None,
    model_bytes: bytes | None = None,
    start: int = 0,
) -> dict[str, TensorStats]:
    """Run ``model`` on ONNX Runtime over ``batches`` once, collecting statistics of ``tensors``.

    Args:
        model: the FP32 simplified model.
        tensors: the activation tensors to calibrate (the placement plan's).
        batches: float32 inputs, N,C,H,W; split into chunks that fit ``settings.memory_budget``.
        settings: bins, threads, memory budget and sampling (default :class:`CollectSettings`; ``batch_size`` is the
            caller's, who made the batches).
        on_batch: called with each batch's size (progress display).
        model_bytes: ``model`` already serialized (saves a copy of a large model).
        start: the index of the first image of ``batches`` in the whole data set (a shard's offset), which
            fixes the sampled histogram values; statistics of shards merge exactly (:mod:`rescompile.calibrate.merge`).

    Returns:
        ``{tensor: TensorStats}`` in the order of ``tensors``.

    Raises:
        UsageError: no data, an unknown tensor, or NaN/Inf in an activation (the tensor is named).
    """
    settings = settings or CollectSettings()
    tensors = list(dict.fromkeys(tensors))
    _check_tensors(model, tensors)
    settings.check()
    input_name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    exposed = [t for t in tensors if t != input_name]  # the input itself is read from the batch
    relu_outputs = {o for n in model.graph.node if n.op_type == "Relu" for o in n.output}
    stats = {t: TensorStats(t, settings.bins, nonnegative=t in relu_outputs, graph_input=t == input_name) for t in tensors}
    sess = _session(model, model_bytes, exposed, settings.threads) if exposed else None
    run = _Runner(sess, input_name, exposed, stats, settings.memory_budget, settings.sample, start)
    seen = 0
    try:
        for x in batches:
            x = np.ascontiguousarray(x, dtype=np.float32)
            run.feed(x)
            seen += len(x)
            if on_batch is not None:
                on_batch(len(x))
        run.finish()
    finally:
        run.close()
    if seen == 0:
        raise UsageError("the calibration set is empty")
    return stats


def _session(model: onnx.ModelProto, model_bytes: bytes | None, exposed: list[str], threads: int | None) -> Any:
    from rescompile.runtime.sessions import ort_session

    existing = {o.name for o in model.graph.output}
    probe = probe_bytes(model_bytes or model.SerializeToString(), [t for t in exposed if t not in existing])
    # Idle ONNX Runtime threads sleep instead of spinning, so the statistics thread gets their cycles.
    return ort_session(probe, optimize=True, threads=threads, spinning=False)


class _Runner:
    """Feeds chunks to the session and hands finished output buffers to the statistics thread."""

    def __init__(
        self, sess: Any, input_name: str, tensors: list[str], stats: dict[str, TensorStats], budget: int, sample: int | None, start: int = 0
    ) -> None:
        self.sess, self.input_name, self.tensors, self.stats, self.budget = sess, input_name, tensors, stats, budget
        self.sample = sample
        self.next = start  # data-set index of the next image fed
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rescompile-stats")
        self.work = Workspace()
        self.sets: list[_Buffers] = []
        self.pending: list[Future[None] | None] = [None, None]
        self.chunk = 1  # images per run until the first run tells the per-image size
        self.turn = 0
        self.bound = True  # False: outputs are not batch-major float32; use plain runs

    def _stride(self, v: np.ndarray) -> int:
        per_image = v[0].size if v.ndim > 1 and len(v) else v.size
        return 1 if self.sample is None else max(1, -(-per_image // self.sample))

    def _update(self, outs: dict[str, np.ndarray], x: np.ndarray, first: int) -> None:
        if self.input_name in self.stats:
            self.stats[self.input_name].update(x, self.work, self._stride(x), first)
        for t in self.tensors:
            self.stats[t].update(outs[t], self.work, self._stride(outs[t]), first)

    def _take(self, n: int) -> int:
        first, self.next = self.next, self.next + n
        return first

    def feed(self, x: np.ndarray) -> None:
        if self.sess is None:  # nothing to expose: the input's statistics need no model run
            self._update({}, x, self._take(len(x)))
            return
        start = 0
        while start < len(x):
            part = x[start : start + self.chunk]
            start += len(part)
            if not self.sets:
                self._first(part)
            elif not self.bound:
                outs = self.sess.run(self.tensors, {self.input_name: part})
                self._update(dict(zip(self.tensors, outs, strict=True)), part, self._take(len(part)))
            else:
                self._bound_run(part)

    def _first(self, part: np.ndarray) -> None:
        outs = dict(zip(self.tensors, self.sess.run(self.tensors, {self.input_name: part}), strict=True))
        self._update(outs, part, self._take(len(part)))
        n = len(part)
        self.bound = all(v.dtype == np.float32 and v.ndim >= 1 and v.shape[0] == n for v in outs.values())
        per_image = {t: tuple(v.shape[1:]) for t, v in outs.items()}
        bytes_per_image = sum(v.nbytes for v in outs.values()) / max(n, 1)
        self.chunk = max(1, int(self.budget // max(bytes_per_image, 1)))
        if self.bound:
            self.sets = [_Buffers(per_image, self.chunk), _Buffers(per_image, self.chunk)]
        else:
            self.sets = [_Buffers({}, 0)]

    def _bound_run(self, part: np.ndarray) -> None:
        k = self.turn % 2
        self.turn += 1
        if self.pending[k] is not None:
            self.pending[k].result()  # type: ignore[union-attr]  # buffer k is free again (re-raises errors)
        views = self.sets[k].views(len(part))
        binding = self.sess.io_binding()
        binding.bind_cpu_input(self.input_name, part)
        for t, v in views.items():
            binding.bind_output(t, "cpu", 0, np.float32, list(v.shape), v.ctypes.data)
        self.sess.run_with_iobinding(binding)
        self.pending[k] = self.pool.submit(self._update, views, part, self._take(len(part)))

    def finish(self) -> None:
        for f in self.pending:
            if f is not None:
                f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
