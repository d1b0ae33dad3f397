"""Calibration methods over a collected |x| histogram: max, percentile, entropy (KL), mse, and their error.

Every function takes the counts of ``|x|`` in equal bins of ``width`` starting at 0, and
returns an ``amax`` (the clip value; the INT8 scale is ``amax / 127``). The searches are
array operations over all candidate thresholds at once, never a Python loop over bins.
"""

from __future__ import annotations

import numpy as np

LEVELS = 128  # quantized levels of |x| for symmetric INT8 (TensorRT's entropy calibration)
MIN_BINS = 128  # the smallest clip candidate, in bins (TensorRT starts its KL search there)


def used_bins(hist: np.ndarray) -> int:
    """Bins up to and including the last non-empty one."""
    nz = np.flatnonzero(hist)
    return int(nz[-1]) + 1 if nz.size else 0


def percentile_amax(hist: np.ndarray, width: float, percentile: float, amax: float) -> float:
    """The upper edge of the bin holding the ``percentile``-th percentile of |x|, at most ``amax``."""
    total = hist.sum()
    if total == 0 or percentile >= 100.0:
        return amax
    cum = np.cumsum(hist)
    k = int(np.searchsorted(cum, total * percentile / 100.0, side="left"))
    return float(min((k + 1) * width, amax))


def entropy_divergences(hist: np.ndarray, levels: int = LEVELS, start: int = MIN_BINS) -> tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) for every candidate ``i`` in [start, used bins] (TensorRT's entropy calibration).

    For a candidate ``i``: P is the first ``i`` bins with every count beyond folded into bin
    ``i - 1``; Q merges those ``i`` bins into ``levels`` groups (group ``g`` holds the bins
    ``k`` with ``g * i / levels <= k < (g + 1) * i / levels``) and spreads each group's count
    evenly over its non-empty bins. Computed from prefix sums: every candidate costs
    ``O(levels)`` array work, all candidates in one array expression.

    Returns:
        ``(candidates i, divergence)``; ``inf`` where Q is 0 where P is not.
    """
    n = used_bins(hist)
    if n <= start:
        return np.asarray([n], np.int64), np.zeros(1)
    h = hist[:n].astype(np.float64)
    total = h.sum()
    i = np.arange(start, n + 1, dtype=np.int64)
    csum = np.concatenate([[0.0], np.cumsum(h)])
    cnz = np.concatenate([[0], np.cumsum(h > 0)])
    hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    clog = np.concatenate([[0.0], np.cumsum(hlogh)])

    def xlogx(v: np.ndarray) -> np.ndarray:
        return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)

    outliers = total - csum[i]
    last = h[i - 1] + outliers  # P's last bin, outliers folded in
    sum_plogp = clog[i - 1] + xlogx(last)  # sum of p log p over unnormalized P (sums to total)
    # Group bounds ceil(g * i / levels), g = 0..levels, for every candidate: shape (candidates, levels + 1).
    bounds = (np.arange(levels + 1)[None, :] * i[:, None] + levels - 1) // levels
    c = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
    z = cnz[bounds[:, 1:]] - cnz[bounds[:, :-1]]
    per_bin = np.where(z > 0, c / np.maximum(z, 1), 0.0)  # Q's value on each non-empty bin of a group
    # sum_k p_k log q_k: each group contributes c_g log(c_g / z_g); the folded outliers sit on bin i-1.
    sum_plogq = (c * np.log(np.where(per_bin > 0, per_bin, 1.0))).sum(axis=1)
    q_last = per_bin[:, -1]
    sum_plogq += np.where(outliers > 0, outliers * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
    kept = total - outliers  # Q's total before normalization
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (sum_plogp / total - np.log(total)) - (sum_plogq / total - np.log(kept))
    kl = np.where((outliers > 0) & (h[i - 1] == 0), np.inf, kl)  # P > 0 where Q = 0
    kl = np.where(kept > 0, np.maximum(kl, 0.0), np.inf)
    return i, kl


def entropy_amax(hist: np.ndarray, width: float, amax: float, levels: int = LEVELS) -> float:
    """TensorRT's entropy calibration: the candidate with the least KL divergence; threshold (m + 0.5) * width.

    The first bin takes its neighbour's count first (as NVIDIA's pytorch-quantization does): after a
    ReLU it holds the exact zeros, often half of all values, and that spike alone would make the
    smallest candidate win (merging bin 0 with any other bin then costs more than clipping).
    """
    if hist.size > 1:
        hist = hist.copy()
        hist[0] = hist[1]
    i, kl = entropy_divergences(hist, levels)
    if not np.isfinite(kl).any():
        return amax
    m = int(i[int(np.argmin(kl))])
    return float(min((m + 0.5) * width, amax))


def expected_mse(hist: np.ndarray, width: float, amax: np.ndarray | float, levels: int = LEVELS - 1) -> np.ndarray:
    """Expected squared error of symmetric INT8 with clip ``amax`` (one or many), values at bin centers.

    Values inside the clip round with a step ``s = amax / levels``: error ``s^2 / 12`` (uniform
    rounding noise; bin 0, mostly exact zeros after ReLU, rounds to 0 exactly). Values beyond
    the clip lose ``(|x| - amax)^2``. Returns the mean error per value.
    """
    a = np.atleast_1d(np.asarray(amax, np.float64))
    h = hist.astype(np.float64)
    total = max(h.sum(), 1.0)
    centers = (np.arange(h.size) + 0.5) * width
    # Suffix sums of h, h*x, h*x^2 give the clipping error of every candidate at once.
    s0 = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    s1 = np.concatenate([np.cumsum((h * centers)[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum((h * centers**2)[::-1])[::-1], [0.0]])
    first_out = np.clip(np.ceil(a / width - 0.5).astype(np.int64), 0, h.size)  # first bin whose center > amax
    clip = s2[first_out] - 2 * a * s1[first_out] + a * a * s0[first_out]
    inside = (s0[0] - s0[first_out]) - np.where(first_out > 0, h[0], 0.0)
    step = a / levels
    return (np.maximum(clip, 0.0) + inside * step * step / 12.0) / total


def mse_amax(hist: np.ndarray, width: float, amax: float) -> float:
    """The clip value among bin edges (from ``MIN_BINS`` bins up) with the least expected squared error."""
    n = used_bins(hist)
    if n <= MIN_BINS:
        return amax
    cands = np.append(np.arange(MIN_BINS, n + 1) * width, amax)
    cands = cands[cands <= amax]
    err = expected_mse(hist, width, cands)
    return float(cands[int(np.argmin(err))])


def quantization_error(hist: np.ndarray, width: float, amax: np.ndarray | float, samples: int = 8) -> np.ndarray:
    """Mean squared error of symmetric INT8 with clip ``amax``, values spread evenly inside each bin.

    The exact quantizer (round to the nearest of 127 steps, clip) applied at ``samples``
    points per bin: a finer measure than :func:`expected_mse`'s rounding-noise model, used by
    ``auto`` to compare the methods' clips.
    """
    a = np.atleast_1d(np.asarray(amax, np.float64))
    n = used_bins(hist)
    h = hist[:n].astype(np.float64)
    total = max(h.sum(), 1.0)
    x = ((np.arange(n)[:, None] + (np.arange(samples)[None, :] + 0.5) / samples) * width).reshape(-1)
    w = np.repeat(h / samples, samples)
    err = np.empty(a.size)
    for j, amax_j in enumerate(a):  # one row per method: a handful, not a loop over bins
        step = amax_j / 127.0
        q = np.minimum(np.round(x / step), 127.0) * step
        err[j] = float(np.sum(w * (x - q) ** 2)) / total
    return err
