"""From collected statistics to quantization ranges, per method; serializable as ranges.json.

Every method reads the same :class:`TensorStats`, so switching method re-runs nothing.
``auto`` picks, per tensor, the method whose clip has the least quantization error on the
collected histogram (:func:`rescompile.calibrate.methods.quantization_error`).

``entropy`` is TensorRT's KL search (:func:`rescompile.calibrate.methods.entropy_amax`) where its
assumption holds — a dense activation distribution whose rare large values may be clipped — and
the observed range where it does not (:func:`entropy_rule`, documented in docs/calibration.md).

``TensorRange.amax`` is the symmetric clip (INT8 scale ``amax / 127``); ``min``/``max`` are
the observed extremes clipped to ``[-amax, amax]``, the range of an asymmetric (UINT8)
quantizer calibrated by the same method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rescompile.buildfolder import RANGES
from rescompile.calibrate.collect import TensorStats
from rescompile.calibrate.methods import entropy_amax, mse_amax, percentile_amax, quantization_error
from rescompile.errors import UsageError
from rescompile.readers import short

METHODS = ("max", "percentile", "entropy", "mse", "auto")
SINGLE_METHODS = METHODS[:-1]
DEFAULT_PERCENTILE = 99.99
SCHEMA = "rescompile.ranges/2"
_EPS = 1e-8
# entropy: KL is trusted only on a dense histogram (at least this share of the bins holding 99% of the values
# are non-empty) and only while it clips at most MAX_CLIP_SHARE of the values; see entropy_rule.
MIN_DENSITY = 0.5
MAX_CLIP_SHARE = 0.01
ENTROPY_VERSION = 2  # in ranges.json params: ranges made by the earlier, unguarded search are not reused


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one tensor: symmetric ``amax`` and the min/max of an asymmetric range."""

    amax: float
    min: float
    max: float
    method: str


@dataclass
class CalibrationResult:
    """Ranges of every calibrated tensor, the method and its parameters, and the cache key."""

    ranges: dict[str, TensorRange]
    method: str
    samples: int
    key: dict[str, str] = field(default_factory=dict)  # sha256 of the model and of data+preprocessing
    params: dict[str, Any] = field(default_factory=dict)  # percentile, bins, levels
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)  # per tensor: histogram and each method
    preprocess: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "method": self.method,
            "params": self.params,
            "samples": self.samples,
            "key": self.key,
            "preprocess": self.preprocess,
            "tensors": {
                k: {**asdict(v), **({"summary": self.summary[k]} if k in self.summary else {})} for k, v in sorted(self.ranges.items())
            },
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = RANGES) -> CalibrationResult:
        """Parse ranges.json (schema 1 or 2).

        Raises:
            UsageError: not a ranges.json, or a tensor without a finite positive amax.
        """
        from rescompile.readers import parse_json

        doc = parse_json(text, source, "rescompile ranges.json")
        try:
            ranges, summary = {}, {}
            for k, v in doc["tensors"].items():
                ranges[k] = TensorRange(float(v["amax"]), float(v["min"]), float(v["max"]), str(v["method"]))
                if "summary" in v:
                    summary[k] = v["summary"]
            result = cls(
                ranges,
                doc["method"],
                int(doc["samples"]),
                dict(doc.get("key", {})),
                dict(doc.get("params", {})),
                summary,
                dict(doc.get("preprocess", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise UsageError(f"not a rescompile ranges.json ({type(exc).__name__}: {short(exc.args[0] if exc.args else '')})") from None
        for k, r in result.ranges.items():
            if not (np.isfinite(r.amax) and r.amax > 0):
                raise UsageError(f"ranges.json: tensor {short(k)} has amax {r.amax}; it must be finite and positive")
            if not (np.isfinite(r.min) and np.isfinite(r.max) and r.min <= r.max):
                raise UsageError(f"ranges.json: tensor {short(k)} has min {r.min} and max {r.max}; they must be finite, min <= max")
        return result

    @classmethod
    def read(cls, path: Any) -> CalibrationResult:
        """Parse a ranges.json file (see :meth:`from_json`); a missing or unreadable file is a UsageError too."""
        from rescompile.readers import parse_text_file

        return parse_text_file(path, "ranges file", lambda text: cls.from_json(text, str(path)))


def check_method(method: str, percentile: float = DEFAULT_PERCENTILE) -> None:
    """Raise UsageError for an unknown method or a percentile outside (0, 100]."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}", hint="one of: " + ", ".join(METHODS))
    if not (0.0 < percentile <= 100.0):
        raise UsageError(f"--percentile must be in (0, 100], not {percentile}")


def clipped_share(hist: np.ndarray, width: float, amax: float) -> float:
    """Share of the histogrammed values whose ``|x|`` lies beyond ``amax`` (bins wholly above it)."""
    total = hist.sum()
    if total == 0:
        return 0.0
    first = int(np.ceil(amax / width - 1e-9))
    return float(hist[first:].sum() / total)


def entropy_rule(stats: TensorStats) -> tuple[float, str]:
    """``entropy``'s clip for one tensor and the rule that chose it.

    TensorRT's KL search assumes an activation histogram: dense, mostly small values with a
    tail whose rare large values may be clipped. Where that does not hold, clipping destroys
    information, so the observed range (max) is kept instead:

    - ``graph-input``: the model's input is preprocessed data, bounded by its own recipe;
      on the demo, KL clipped the Fashion-MNIST input at 0.81 (the background level) and cut
      30% of the pixels: 11 points of top-1 lost on the 10,000 test images;
    - ``sparse``: fewer than half of the bins holding the lower 99% of the values are non-empty
      (few distinct levels, e.g. pixels, or too few values to estimate a distribution; the
      tail is left out: a long tail is sparse in any histogram, and clipping it is KL's job);
    - ``kl-clip-guard``: the KL minimum would clip more than 1% of the values — a clip that
      large is mass, not outliers; the clip is raised to the 99th percentile.

    Otherwise ``kl``: TensorRT's threshold, unchanged.
    """
    h, w, amax = stats.abs_hist(), stats.width, stats.amax
    if stats.graph_input:
        return amax, "graph-input"
    if h.sum() == 0:
        return amax, "sparse"
    bulk = int(np.searchsorted(np.cumsum(h), 0.99 * h.sum(), side="left")) + 1  # bins holding 99% of the values
    if np.count_nonzero(h[:bulk]) < MIN_DENSITY * bulk:
        return amax, "sparse"
    a = entropy_amax(h, w, amax)
    if clipped_share(h, w, a) > MAX_CLIP_SHARE:
        return max(a, percentile_amax(h, w, 100.0 * (1.0 - MAX_CLIP_SHARE), amax)), "kl-clip-guard"
    return a, "kl"


def candidate_amax(
    stats: TensorStats, percentile: float = DEFAULT_PERCENTILE, entropy: tuple[float, str] | None = None
) -> dict[str, float]:
    """The clip value of every single method for one tensor (floored at a tiny positive value).

    ``entropy``: :func:`entropy_rule`'s result when the caller has it already.
    """
    amax = stats.amax
    if stats.count == 0 or amax <= 0:
        return dict.fromkeys(SINGLE_METHODS, _EPS)
    h, w = stats.abs_hist(), stats.width
    out = {
        "max": amax,
        "percentile": percentile_amax(h, w, percentile, amax),
        "entropy": (entropy or entropy_rule(stats))[0],
        "mse": mse_amax(h, w, amax),
    }
    return {k: max(float(v), _EPS) for k, v in out.items()}


def analyze(stats: TensorStats, percentile: float = DEFAULT_PERCENTILE) -> dict[str, Any]:
    """Every method's clip and quantization error for one tensor, and the histogram's summary."""
    rule = entropy_rule(stats) if stats.count and stats.amax > 0 else None
    cands = candidate_amax(stats, percentile, rule)
    errs = (
        quantization_error(stats.abs_hist(), stats.width, np.asarray([cands[m] for m in SINGLE_METHODS]))
        if stats.count
        else (np.zeros(len(SINGLE_METHODS)))
    )
    errors = {m: float(e) for m, e in zip(SINGLE_METHODS, errs, strict=True)}
    # Ties (e.g. percentile == max on a small tensor) go to the earlier, simpler method.
    lowest = min(errors.values())
    best = next(m for m in SINGLE_METHODS if errors[m] <= lowest * (1 + 1e-9))
    h = stats.abs_hist()
    return {
        "count": int(stats.count),
        "hist_count": int(stats.hist_count),
        "min": float(stats.min) if stats.count else 0.0,
        "max": float(stats.max) if stats.count else 0.0,
        "hist_edge": float(stats.edge),
        "hist_bins": int(stats.bins),
        "bins_used": int(np.flatnonzero(h)[-1] + 1) if h.any() else 0,
        "zero_bin_fraction": float(h[0] / max(h.sum(), 1)) if h.size else 0.0,
        "amax": cands,
        "error": errors,  # mean squared INT8 error of each method's clip on the histogram
        "auto": best,
        "entropy_rule": rule[1] if rule is not None else "empty",
    }


def range_for(
    stats: TensorStats, method: str, percentile: float = DEFAULT_PERCENTILE, analysis: dict[str, Any] | None = None
) -> TensorRange:
    """The TensorRange of one tensor by ``method`` (``auto`` resolves to the chosen single method)."""
    check_method(method, percentile)
    a = analysis or analyze(stats, percentile)
    chosen = a["auto"] if method == "auto" else method
    amax = float(a["amax"][chosen])
    lo = max(float(stats.min), -amax) if stats.count else 0.0
    hi = min(float(stats.max), amax) if stats.count else 0.0
    return TensorRange(amax, lo, hi, chosen)


def compute_ranges(stats: dict[str, TensorStats], method: str = "max", percentile: float = DEFAULT_PERCENTILE) -> dict[str, TensorRange]:
    """Ranges for every tensor from one collection pass; switching method re-runs nothing."""
    return {name: range_for(s, method, percentile) for name, s in stats.items()}


def calibration_result(
    stats: dict[str, TensorStats],
    method: str,
    samples: int,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    key: dict[str, str] | None = None,
    preprocess: dict[str, Any] | None = None,
    sample: int | None = None,
) -> CalibrationResult:
    """Ranges by ``method`` plus, per tensor, every method's clip and error (the ranges.json content)."""
    check_method(method, percentile)
    summary = {name: analyze(s, percentile) for name, s in stats.items()}
    ranges = {name: range_for(s, method, percentile, summary[name]) for name, s in stats.items()}
    params = {
        "percentile": percentile,
        "bins": next(iter(stats.values())).bins if stats else 0,
        "levels": 128,
        "sample": sample,
        "entropy": ENTROPY_VERSION,
    }
    return CalibrationResult(ranges, method, samples, dict(key or {}), params, summary, dict(preprocess or {}))
