"""Streaming activation statistics: running min/max and an |x| histogram whose range grows by re-binning.

Memory is fixed per tensor (``bins`` counters), whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from rescompile.errors import UsageError

DEFAULT_BINS = 2048


@dataclass
class TensorStats:
    """Running statistics of one tensor."""

    name: str
    bins: int = DEFAULT_BINS
    min: float = np.inf
    max: float = -np.inf
    count: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hist_edge: float = 0.0  # histogram covers |x| in [0, hist_edge]

    def update(self, x: np.ndarray) -> None:
        if not np.isfinite(x).all():
            raise UsageError(f"activation {self.name!r} holds NaN or Inf during calibration")
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.size
        a = np.abs(x.ravel())
        amax = float(a.max())
        if self.hist.size == 0:
            self.hist = np.zeros(self.bins, np.int64)
            self.hist_edge = amax if amax > 0 else 1e-8
        elif amax > self.hist_edge:
            self._grow(amax)
        width = self.hist_edge / self.bins
        idx = np.minimum((a / width).astype(np.int64), self.bins - 1)
        self.hist += np.bincount(idx, minlength=self.bins)

    def _grow(self, amax: float) -> None:
        """Widen the range by an integer factor and merge bins, so old counts stay exact."""
        factor = int(np.ceil(amax / self.hist_edge))
        padded = np.zeros(self.bins * factor, np.int64)
        padded[: self.bins] = self.hist
        self.hist = padded.reshape(self.bins, factor).sum(axis=1)
        self.hist_edge *= factor

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max))


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names``."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in out.graph.output}
    for n in names:
        if n not in existing:
            out.graph.output.append(onnx.ValueInfoProto(name=n))
    return out


def collect_stats(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[np.ndarray],
    *,
    bins: int = DEFAULT_BINS,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, TensorStats]:
    """Run ``model`` on ONNX Runtime over ``batches`` once, collecting stats for ``tensors``.

    Args:
        model: the FP32 simplified model.
        tensors: the activation tensors the placement plan quantizes.
        batches: float32 inputs, N,C,H,W.
        on_batch: called with each batch's size (progress display).

    Raises:
        UsageError: no data, or NaN/Inf in an activation (the tensor is named).
    """
    import onnxruntime as ort

    probe = with_outputs(model, tensors)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    stats = {t: TensorStats(t, bins) for t in tensors}
    seen = 0
    for x in batches:
        outs = sess.run(tensors, {input_name: x})
        for t, v in zip(tensors, outs, strict=True):
            stats[t].update(np.asarray(v))
        seen += len(x)
        if on_batch is not None:
            on_batch(len(x))
    if seen == 0:
        raise UsageError("the calibration set is empty")
    return stats
