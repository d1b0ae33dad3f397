"""Error bars for the accuracy metrics and the gate decisions that use them (docs/statistics.md).

Pure functions over counts and logits, numpy and the standard library only (no scipy): the
binomial and beta distributions are computed here, exactly (the regularized incomplete beta
function by its continued fraction, the normal quantile by ``statistics.NormalDist``).

- :func:`agreement_interval`: top-1 agreement (a proportion), Clopper-Pearson by default, Wilson too.
- :func:`top1_drop`: the paired top-1 drop from the discordant counts, Tango's score interval by
  default (Newcombe's hybrid score interval on request), with the exact McNemar p-values;
  :func:`bootstrap_drop` is the seeded paired bootstrap of the same quantity.
- :func:`per_class_drop` / :func:`decide_classes`: the same per class, Bonferroni-adjusted intervals
  and Holm's step-down test for the gate.
- :func:`samples_to_settle`, :func:`decide`, :func:`decide_estimate`: ``--gate-mode point|confident``.
- :func:`mean_interval`: the mean logit cosine with Student's t interval.
- :func:`margin_agreement`: agreement on the samples whose FP32 decision no healthy INT8 error can flip.

Units follow the report: agreement in percent, drops in percentage points (FP32 minus INT8,
positive = INT8 loses), levels as fractions (0.95).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from rescompile.errors import UsageError

LEVEL = 0.95
AGREEMENT_METHODS = ("clopper-pearson", "wilson")
DROP_METHODS = ("tango", "newcombe")
MODES = ("point", "confident")
COMPARISONS = ("<=", ">=")
BOOTSTRAP_REPLICATES = 10_000
MAX_SAMPLES = 10**12  # samples_to_settle gives up (None) beyond this

_STD_NORMAL = NormalDist()


# ---------------------------------------------------------------- distributions


def normal_quantile(p: float) -> float:
    """The standard normal quantile (Wichura's AS 241 via ``statistics.NormalDist``, ~1e-16 relative)."""
    return _STD_NORMAL.inv_cdf(p)


def normal_cdf(x: float) -> float:
    if x == math.inf:
        return 1.0
    if x == -math.inf:
        return 0.0
    return _STD_NORMAL.cdf(x)


def _two_sided_z(level: float) -> float:
    return normal_quantile(1.0 - (1.0 - level) / 2.0)


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, modified Lentz (Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    max_iter = 10_000 + int(20 * math.sqrt(max(a, b)))
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 3e-16:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    Evaluated by its continued fraction (Numerical Recipes, 3rd ed., section 6.4), on the side of
    the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where it converges fast; relative error ~1e-14.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q, by bisection on [0, 1] to the last representable bit."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def binom_cdf(k: float, n: float, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exactly: I_{1-p}(n - k, k + 1) (0 below 0, 1 from n on)."""
    k = math.floor(k)
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return betainc(n - k, k + 1.0, 1.0 - p)


# ---------------------------------------------------------------- agreement (one proportion)


@dataclass(frozen=True)
class ProportionEstimate:
    """A proportion in percent with its interval, e.g. top-1 agreement: ``successes`` of ``n`` samples."""

    successes: float
    n: float
    point: float  # percent
    lo: float  # percent
    hi: float  # percent
    level: float
    method: str  # "clopper-pearson" | "wilson"


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise UsageError(f"a confidence level must be a number strictly between 0 and 1, got {level!r}")


def _check_proportion(k: float, n: float) -> None:
    if not (n > 0):
        raise UsageError(f"an interval needs at least one sample, got n = {n}")
    if not 0 <= k <= n:
        raise UsageError(f"successes must lie in [0, n]: got {k} of {n}")


def wilson_interval(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) for k successes of n, as fractions.

    centre = (p + z^2/2n) / (1 + z^2/n), half-width = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    """
    _check_level(level)
    _check_proportion(k, n)
    z = _two_sided_z(level)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1.0 - p) / n + z * z / (4.0 * n * n), 0.0))
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


@lru_cache(maxsize=4096)
def clopper_pearson_interval(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper & Pearson 1934) interval for k successes of n, as fractions.

    lo = B^-1(alpha/2; k, n-k+1) (0 when k = 0), hi = B^-1(1-alpha/2; k+1, n-k) (1 when k = n):
    the p at which P(X >= k) resp. P(X <= k) is alpha/2. Real-valued k is allowed (expected
    counts, :func:`samples_to_settle`).
    """
    _check_level(level)
    _check_proportion(k, n)
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else beta_quantile(alpha / 2.0, k, n - k + 1.0)
    hi = 1.0 if k == n else beta_quantile(1.0 - alpha / 2.0, k + 1.0, n - k)
    return lo, hi


def agreement_interval(k: float, n: float, level: float = LEVEL, method: str = "clopper-pearson") -> ProportionEstimate:
    """Top-1 agreement of ``k`` out of ``n`` samples with its interval, in percent.

    Clopper-Pearson is the default because it is exact: its coverage is at least ``level`` for
    every true agreement and every n (Wilson's is ``level`` on average but dips below it for
    some p), and a gate that says "confidently above the floor" must not overstate; near
    agreement 100%, where healthy builds sit, it is also the one that never collapses to a
    zero-width bound. Wilson's interval (``method="wilson"``) is narrower and is given for comparison.

    Raises:
        UsageError: n = 0, k outside [0, n], a level outside (0, 1) or an unknown method.
    """
    if method not in AGREEMENT_METHODS:
        raise UsageError(f"unknown interval method {method!r}", hint="one of: " + ", ".join(AGREEMENT_METHODS))
    lo, hi = clopper_pearson_interval(k, n, level) if method == "clopper-pearson" else wilson_interval(k, n, level)
    return ProportionEstimate(k, n, 100.0 * k / n, 100.0 * lo, 100.0 * hi, level, method)


# ---------------------------------------------------------------- a mean (the logit cosine)


@dataclass(frozen=True)
class MeanEstimate:
    """The mean of ``n`` per-sample values (e.g. logit cosine) with Student's t interval, clipped to [``floor``, ``ceil``]."""

    n: float
    point: float
    lo: float
    hi: float
    sd: float  # sample standard deviation of the values
    level: float
    method: str  # "t"
    floor: float = -math.inf
    ceil: float = math.inf


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile with ``df`` degrees of freedom, from the incomplete beta function.

    For t > 0, P(T <= t) = 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2), so the upper quantile
    is t = sqrt(df (1 - x) / x) at x = I^-1(2 (1 - p); df/2, 1/2).
    """
    if not df > 0:
        raise ValueError(f"t_quantile needs df > 0, got {df}")
    if p == 0.5:
        return 0.0
    upper = max(p, 1.0 - p)
    x = beta_quantile(2.0 * (1.0 - upper), df / 2.0, 0.5)
    t = math.sqrt(df * (1.0 - x) / x) if x > 0 else math.inf
    return t if p > 0.5 else -t


def _mean_bounds(point: float, sd: float, n: float, level: float, floor: float, ceil: float) -> tuple[float, float]:
    if n < 2:
        return floor, ceil
    half = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1.0) * sd / math.sqrt(n)
    return max(floor, point - half), min(ceil, point + half)


def mean_interval(values: np.ndarray, level: float = LEVEL, *, floor: float = -math.inf, ceil: float = math.inf) -> MeanEstimate:
    """The mean of ``values`` with Student's t interval (mean +- t_{n-1} sd / sqrt(n)), clipped to [floor, ceil].

    For the mean logit cosine (bounded by 1): the per-sample cosines are skewed, but their mean
    is close to normal at the sample counts a validation split has (central limit theorem), and
    the t quantile keeps small n honest. One value gives the whole range [floor, ceil].

    Raises:
        UsageError: no values, non-finite values or a bad level.
    """
    _check_level(level)
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise UsageError(f"a mean interval needs at least one finite value, got {v.size} values")
    point = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    lo, hi = _mean_bounds(point, sd, v.size, level, floor, ceil)
    return MeanEstimate(int(v.size), point, min(lo, point), max(hi, point), sd, level, "t", floor, ceil)


# ---------------------------------------------------------------- paired top-1 drop


@dataclass(frozen=True)
class PairedCounts:
    """The paired 2x2 table of FP32 and INT8 correctness on the same ``n`` samples.

    ``ref_only`` (b): FP32 right and INT8 wrong; ``cand_only`` (c): FP32 wrong and INT8 right;
    ``both`` (a): both right, needed only by Newcombe's interval (None when unknown).
    """

    ref_only: int
    cand_only: int
    n: int
    both: int | None = None

    @classmethod
    def from_correct(cls, ref_correct: np.ndarray, cand_correct: np.ndarray) -> PairedCounts:
        """From per-sample correctness (booleans) of FP32 and INT8 on the same samples."""
        r, c = np.asarray(ref_correct, bool), np.asarray(cand_correct, bool)
        if r.shape != c.shape or r.ndim != 1:
            raise UsageError(f"paired correctness must be two 1-D arrays of one length, got {r.shape} and {c.shape}")
        return cls(int(np.sum(r & ~c)), int(np.sum(~r & c)), int(r.size), int(np.sum(r & c)))

    @classmethod
    def from_logits(cls, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> PairedCounts:
        labels = np.asarray(labels)
        return cls.from_correct(np.asarray(reference).argmax(1) == labels, np.asarray(candidate).argmax(1) == labels)


@dataclass(frozen=True)
class DropEstimate:
    """The paired top-1 drop (FP32 minus INT8) in points: ``(b - c) / n * 100`` and its interval.

    ``p_exact`` is the exact two-sided McNemar p-value (any difference), ``p_drop`` the exact
    one-sided one for "INT8 is worse" (binomial on b of b + c at 1/2). Both are 1.0 when b = c = 0.
    """

    ref_only: float  # b
    cand_only: float  # c
    n: float
    point: float  # points
    lo: float  # points
    hi: float  # points
    level: float
    method: str  # "tango" | "newcombe" | "bootstrap"
    p_exact: float
    p_drop: float


def _check_paired(b: float, c: float, n: float) -> None:
    if not (n > 0):
        raise UsageError(f"a paired interval needs at least one sample, got n = {n}")
    if b < 0 or c < 0 or b + c > n:
        raise UsageError(f"discordant counts must be >= 0 and b + c <= n: got b = {b}, c = {c}, n = {n}")


def mcnemar_exact(b: int, c: int) -> tuple[float, float]:
    """Exact McNemar test (binomial on b of b + c discordant pairs at p = 1/2).

    Returns:
        (two-sided p = min(1, 2 P(X <= min(b, c))), one-sided p for "b > c" = P(X >= b)).
    """
    m = b + c
    if m == 0:
        return 1.0, 1.0
    two = min(1.0, 2.0 * binom_cdf(min(b, c), m, 0.5))
    return two, binom_cdf(c, m, 0.5)  # P(X >= b) = P(X <= c) at p = 1/2


def _tango_q(b: float, c: float, n: float, d0: float) -> float:
    """Restricted ML estimate of P(FP32 wrong, INT8 right) given drop d0 (Tango 1998, eq. for q21).

    The positive root of 2n q^2 + B q + C = 0, B = -(b + c) + d0 (2n - b + c), C = -c d0 (1 - d0),
    computed without cancellation.
    """
    bq = -(b + c) + d0 * (2.0 * n - b + c)
    cq = -c * d0 * (1.0 - d0)
    disc = math.sqrt(max(bq * bq - 8.0 * n * cq, 0.0))
    if bq > 0:
        return -2.0 * cq / (bq + disc) if bq + disc > 0 else 0.0
    return (disc - bq) / (4.0 * n)


def tango_score(b: float, c: float, n: float, d0: float) -> float:
    """Tango's score statistic for H0: drop = d0 (fraction): (b - c - n d0) / sqrt(n (2 q~ + d0 (1 - d0))).

    Large positive values say the drop is above d0. +-inf where the variance vanishes.
    """
    num = b - c - n * d0
    var = n * (2.0 * _tango_q(b, c, n, d0) + d0 * (1.0 - d0))
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _bisect_decreasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The x in [lo, hi] where the decreasing f crosses target (f(lo) >= target >= f(hi))."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def tango_interval(b: float, c: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Tango's (1998) asymptotic score interval for the paired difference (b - c) / n, as fractions.

    The set of d0 whose score statistic :func:`tango_score` lies within +-z: the score test
    inverted. Depends on b, c and n only (not on how the concordant pairs split).
    """
    _check_level(level)
    _check_paired(b, c, n)
    z = _two_sided_z(level)
    est = (b - c) / n
    edge = 1e-15

    def f(d0: float) -> float:
        return tango_score(b, c, n, d0)

    lo = -1.0 if est <= -1.0 or f(-1.0 + edge) <= z else _bisect_decreasing(f, z, -1.0 + edge, est)
    hi = 1.0 if est >= 1.0 or f(1.0 - edge) >= -z else _bisect_decreasing(f, -z, est, 1.0 - edge)
    return max(-1.0, min(lo, est)), min(1.0, max(hi, est))


def newcombe_interval(a: int, b: int, c: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Newcombe's (1998, method 10) hybrid score interval for the paired difference (b - c) / n.

    Wilson intervals (l1, u1) for p1 = (a + b)/n and (l2, u2) for p2 = (a + c)/n, combined by
    square-and-add with the correlation estimate phi (the n/2 correction on ad - bc > 0):
    L = D - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2),
    U = D + sqrt((p2-l2)^2 - 2 phi (p2-l2)(u1-p1) + (u1-p1)^2).
    """
    _check_level(level)
    _check_paired(b, c, n)
    d = n - a - b - c
    if a < 0 or d < 0:
        raise UsageError(f"paired table needs 0 <= a and a + b + c <= n: got a = {a}, b = {b}, c = {c}, n = {n}")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, level)
    l2, u2 = wilson_interval(a + c, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        if cross > n / 2.0:
            phi = (cross - n / 2.0) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    est = p1 - p2
    lo = est - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = est + math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return max(-1.0, lo), min(1.0, hi)


def top1_drop(b: int, c: int, n: int, level: float = LEVEL, method: str = "tango", both: int | None = None) -> DropEstimate:
    """The paired top-1 drop in points with its interval and exact McNemar p-values.

    Args:
        b: samples FP32 gets right and INT8 wrong.
        c: samples FP32 gets wrong and INT8 right.
        n: samples (the same ones under both).
        method: "tango" (default; Tango 1998, needs b, c, n only) or "newcombe" (Newcombe 1998
            method 10, needs ``both``, the samples both get right).

    Raises:
        UsageError: n = 0, inconsistent counts, ``newcombe`` without ``both``, an unknown method.
    """
    if method not in DROP_METHODS:
        raise UsageError(f"unknown paired interval method {method!r}", hint="one of: " + ", ".join(DROP_METHODS))
    _check_paired(b, c, n)
    if method == "tango":
        lo, hi = tango_interval(b, c, n, level)
    else:
        if both is None:
            raise UsageError("Newcombe's paired interval needs the count of samples both get right")
        lo, hi = newcombe_interval(both, b, c, n, level)
    p_two, p_drop = mcnemar_exact(int(round(b)), int(round(c)))
    return DropEstimate(b, c, n, 100.0 * (b - c) / n, 100.0 * lo, 100.0 * hi, level, method, p_two, p_drop)


def bootstrap_drop(b: int, c: int, n: int, level: float = LEVEL, replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> DropEstimate:
    """The paired bootstrap percentile interval of the top-1 drop, seeded and byte-for-byte repeatable.

    Resampling n (FP32, INT8) pairs with replacement changes the drop only through the counts of
    the two discordant kinds, so each replicate draws those counts from Multinomial(n; b/n, c/n,
    1 - (b+c)/n) — the same distribution as resampling the pairs, without the n x replicates
    index array. numpy's PCG64 with ``seed``; the quantiles use numpy's default (linear) rule.
    """
    _check_level(level)
    _check_paired(b, c, n)
    if replicates < 1:
        raise UsageError(f"the bootstrap needs at least one replicate, got {replicates}")
    rng = np.random.Generator(np.random.PCG64(seed))
    probs = np.array([b / n, c / n, max(0.0, 1.0 - (b + c) / n)])
    draws = rng.multinomial(int(n), probs / probs.sum(), size=replicates)
    drops = (draws[:, 0] - draws[:, 1]) / n
    alpha = 1.0 - level
    q_lo, q_hi = np.quantile(drops, [alpha / 2.0, 1.0 - alpha / 2.0])
    point = (b - c) / n
    lo, hi = min(float(q_lo), point), max(float(q_hi), point)  # a skewed percentile interval can miss its point on tiny n
    p_two, p_drop = mcnemar_exact(b, c)
    return DropEstimate(b, c, n, 100.0 * point, 100.0 * lo, 100.0 * hi, level, "bootstrap", p_two, p_drop)


# ---------------------------------------------------------------- gate decisions


@dataclass(frozen=True)
class Decision:
    """A gate's verdict on an estimate: passed in the chosen mode, and where the interval lies.

    ``side``: "safe" (the whole interval passes), "unsafe" (the whole interval fails) or
    "straddles". ``samples_to_settle``: total samples at the observed rates after which the
    interval no longer straddles (None when it does not straddle or never settles).
    """

    passed: bool
    mode: str
    side: str
    point: float
    lo: float
    hi: float
    threshold: float
    comparison: str
    samples_to_settle: int | None = None

    @property
    def straddles(self) -> bool:
        return self.side == "straddles"


def _check_mode(comparison: str, mode: str) -> None:
    if comparison not in COMPARISONS:
        raise UsageError(f"unknown comparison {comparison!r}", hint="one of: " + ", ".join(COMPARISONS))
    if mode not in MODES:
        raise UsageError(f"unknown gate mode {mode!r}", hint="one of: " + ", ".join(MODES))


def _side(lo: float, hi: float, threshold: float, comparison: str) -> str:
    if comparison == "<=":
        return "safe" if hi <= threshold else "unsafe" if lo > threshold else "straddles"
    return "safe" if lo >= threshold else "unsafe" if hi < threshold else "straddles"


def decide(
    point: float, lo: float, hi: float, threshold: float, comparison: str, mode: str, *, samples_to_settle: int | None = None
) -> Decision:
    """Judge one metric: ``point`` mode passes on the point estimate (value <= or >= threshold,
    today's gates); ``confident`` passes only when the whole interval is on the safe side.

    Raises:
        UsageError: an unknown comparison or mode, or lo <= point <= hi does not hold.
    """
    _check_mode(comparison, mode)
    if not lo <= point <= hi:
        raise UsageError(f"an estimate must lie in its interval: {lo} <= {point} <= {hi}")
    side = _side(lo, hi, threshold, comparison)
    if mode == "point":
        passed = point <= threshold if comparison == "<=" else point >= threshold
    else:
        passed = side == "safe"
    return Decision(passed, mode, side, point, lo, hi, threshold, comparison, samples_to_settle if side == "straddles" else None)


Estimate = ProportionEstimate | DropEstimate | MeanEstimate


def _rescaled(est: Estimate, m: float) -> tuple[float, float]:
    """The interval (in the estimate's units) at m samples with the counts scaled to the same rates."""
    if isinstance(est, MeanEstimate):
        return _mean_bounds(est.point, est.sd, m, est.level, est.floor, est.ceil)
    if isinstance(est, ProportionEstimate):
        if est.method not in AGREEMENT_METHODS:
            raise UsageError(f"cannot rescale an interval made by {est.method!r}")
        # k * m / n rounds past m when k = n (117 * (m / 117) = m + 1 ulp): clamp to the valid range
        r = agreement_interval(min(m, est.successes * m / est.n), m, est.level, est.method)
        return r.lo, r.hi
    # Tango's interval needs only b, c and n, so it rescales; it stands in for Newcombe's and the bootstrap's
    b, c = est.ref_only * m / est.n, est.cand_only * m / est.n
    if b + c > m:  # the same rounding when every pair is discordant
        b, c = b * m / (b + c), c * m / (b + c)
        b = min(b, m - c)
    lo, hi = tango_interval(b, c, m, est.level)
    return 100.0 * lo, 100.0 * hi


def _settle_guess(est: Estimate, threshold: float) -> float:
    """Closed-form first guess: the n at which z * sd / sqrt(n) equals the distance to the threshold (Wald)."""
    z = _two_sided_z(est.level)
    if isinstance(est, MeanEstimate):
        gap = abs(est.point - threshold)
        return z * z * est.sd * est.sd / (gap * gap) if gap > 0 else math.inf
    gap = abs(est.point - threshold) / 100.0
    if isinstance(est, ProportionEstimate):
        p = est.successes / est.n
        var = p * (1.0 - p)
    else:
        pb, pc = est.ref_only / est.n, est.cand_only / est.n
        var = pb + pc - (pb - pc) ** 2
    return z * z * var / (gap * gap)


def samples_to_settle(est: Estimate, threshold: float, comparison: str) -> int | None:
    """Total samples after which the interval, at the observed rates, lies wholly on one side of ``threshold``.

    The counts are scaled to m samples at the same rates (expected counts, real-valued) and the
    interval recomputed with the estimate's own method (Tango's for drops: the bootstrap's and
    Newcombe's intervals are read through it). The search starts from the Wald closed form
    n* = z^2 var / (point - threshold)^2 (var = p(1-p) for a proportion, pb + pc - (pb - pc)^2
    for a paired drop), brackets by doubling and bisects on integers, so the answer is the
    smallest such m, never below ``est.n``.

    Returns:
        ``est.n`` (rounded up) when the interval already lies on one side; None when the point
        estimate sits on the threshold (no number of samples settles it) or beyond MAX_SAMPLES.
    """
    _check_mode(comparison, "point")
    n0 = math.ceil(est.n)

    def settled(m: float) -> bool:
        lo, hi = _rescaled(est, m)
        return _side(lo, hi, threshold, comparison) != "straddles"

    if _side(est.lo, est.hi, threshold, comparison) != "straddles":
        return n0
    if est.point == threshold:
        return None
    guess = _settle_guess(est, threshold)
    if not guess < MAX_SAMPLES:
        return None
    lo = n0
    hi = max(n0 + 1, math.ceil(guess))
    while not settled(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_SAMPLES:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if settled(mid):
            hi = mid
        else:
            lo = mid
    return hi


def decide_estimate(est: Estimate, threshold: float, comparison: str, mode: str) -> Decision:
    """:func:`decide` on an estimate, with :func:`samples_to_settle` filled in when the interval straddles."""
    _check_mode(comparison, mode)
    side = _side(est.lo, est.hi, threshold, comparison)
    settle = samples_to_settle(est, threshold, comparison) if side == "straddles" else None
    return decide(est.point, est.lo, est.hi, threshold, comparison, mode, samples_to_settle=settle)


# ---------------------------------------------------------------- per class


@dataclass(frozen=True)
class ClassDrop:
    """One class's paired drop; the interval is at the family's Bonferroni-adjusted level."""

    label: int
    estimate: DropEstimate
    p_holm: float  # Holm-adjusted exact one-sided McNemar p-value for "this class drops at all"


@dataclass(frozen=True)
class ClassDrops:
    """Per-class paired drops, worst point drop first; intervals simultaneous at ``level`` (Bonferroni)."""

    classes: tuple[ClassDrop, ...]
    level: float  # family level, e.g. 0.95
    class_level: float  # each interval's level: 1 - (1 - level) / K
    method: str

    @property
    def worst(self) -> ClassDrop:
        return self.classes[0]


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values: max over j <= i of (K - j + 1) p_(j), capped at 1, in input order."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: (pvalues[i], i))
    out = [0.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        out[i] = running
    return out


def per_class_drop(counts: Mapping[int, PairedCounts], level: float = LEVEL, method: str = "tango") -> ClassDrops:
    """Each class's paired drop with Bonferroni-adjusted intervals (level 1 - (1 - level)/K).

    K is the number of classes with at least one sample. The intervals are simultaneous: all K
    cover their true drops together with probability >= ``level``, so the table can be read as a
    whole. ``p_holm`` adjusts each class's exact one-sided McNemar p-value by Holm's method.

    Raises:
        UsageError: no class has a sample, or a class's counts are inconsistent.
    """
    _check_level(level)
    present = {label: pc for label, pc in counts.items() if pc.n > 0}
    if not present:
        raise UsageError("per-class intervals need at least one class with samples")
    k = len(present)
    class_level = 1.0 - (1.0 - level) / k
    labels = sorted(present)
    estimates = [top1_drop(present[c].ref_only, present[c].cand_only, present[c].n, class_level, method, present[c].both) for c in labels]
    adjusted = holm_adjust([e.p_drop for e in estimates])
    rows = [ClassDrop(int(c), e, p) for c, e, p in zip(labels, estimates, adjusted, strict=True)]
    rows.sort(key=lambda r: (-r.estimate.point, r.label))
    return ClassDrops(tuple(rows), level, class_level, method)


def class_counts(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[int, PairedCounts]:
    """The paired table of each label present in ``labels`` (FP32 and INT8 logits of the same samples)."""
    labels = np.asarray(labels)
    ref_ok = np.asarray(reference).argmax(1) == labels
    cand_ok = np.asarray(candidate).argmax(1) == labels
    return {int(c): PairedCounts.from_correct(ref_ok[labels == c], cand_ok[labels == c]) for c in np.unique(labels)}


def decide_classes(drops: ClassDrops, threshold: float, mode: str) -> Decision:
    """The per-class gate (``--max-class-drop``): every class's drop must be <= ``threshold`` points.

    point: the worst class's point drop decides (today's reading). confident: Holm's step-down
    test (Holm 1979) of the K hypotheses "class k drops more than the threshold", each by Tango's
    one-sided score test at (1 - level)/2 (the one-sided side of a two-sided interval); the gate
    passes when all K are rejected, which keeps the family-wise error <= (1 - level)/2; "unsafe"
    when some class's interval lies wholly above the threshold. Holm can pass a family whose widest
    Bonferroni interval just reaches past the threshold (its later steps test at less than K-fold
    correction); it never fails one whose intervals all lie below it. The Decision's point is the
    worst class's drop and its interval [max lo_k, max hi_k], which covers the largest true class
    drop whenever all K Bonferroni intervals cover theirs (probability >= level).

    ``samples_to_settle`` (when neither safe nor unsafe) is the total sample count, at the
    observed class shares and rates, at which every straddling class's interval settles.
    """
    _check_mode("<=", mode)
    # [max lo_k, max hi_k] is a simultaneous interval for the largest true class drop (Bonferroni)
    point = drops.classes[0].estimate.point
    lo = max(r.estimate.lo for r in drops.classes)
    hi = max(r.estimate.hi for r in drops.classes)
    t = threshold / 100.0
    alpha_one = (1.0 - drops.level) / 2.0
    # one-sided p for H0_k: drop_k >= t; small when the class is clearly below the threshold
    pvals = [normal_cdf(tango_score(r.estimate.ref_only, r.estimate.cand_only, r.estimate.n, t)) for r in drops.classes]
    holm_ok = all(p <= alpha_one for p in holm_adjust(pvals))
    unsafe = any(r.estimate.lo > threshold for r in drops.classes)
    side = "unsafe" if unsafe else "safe" if holm_ok else "straddles"
    if mode == "point":
        passed = point <= threshold
    else:
        passed = side == "safe"
    settle = None
    if side == "straddles":
        total = sum(r.estimate.n for r in drops.classes)
        needs = []
        for r in drops.classes:
            if _side(r.estimate.lo, r.estimate.hi, threshold, "<=") == "straddles":
                m = samples_to_settle(r.estimate, threshold, "<=")
                needs.append(None if m is None else m / r.estimate.n)
        settle = None if any(x is None for x in needs) or not needs else math.ceil(total * max(x for x in needs if x is not None))
    return Decision(passed, mode, side, point, lo, hi, threshold, "<=", settle)


# ---------------------------------------------------------------- margin-aware agreement


@dataclass(frozen=True)
class MarginAgreement:
    """Top-1 agreement counted only on decisive samples: those whose FP32 top-1 margin no healthy INT8 error can overturn.

    ``allowance`` is the logit margin above which a sample is decisive, ``scale`` the FP32
    logits' spread it is measured in, ``rel_error`` the candidate's observed error in that unit
    (RMS of the centred logit error / ``scale``; a healthy build stays near or below the assumed
    ``healthy_rel_error``). ``agreement`` is None when no sample is decisive.
    """

    n: int
    flips: int  # samples whose argmax differs
    decisive: int
    decisive_flips: int
    allowance: float
    scale: float
    rel_error: float | None  # None when FP32's logits have no spread to measure it in
    healthy_rel_error: float
    z: float
    agreement: ProportionEstimate | None

    @property
    def decisive_flip_rate(self) -> float:
        """Decisive flips as a percent of all samples."""
        return 100.0 * self.decisive_flips / self.n


def margin_agreement(
    reference: np.ndarray, candidate: np.ndarray, *, healthy_rel_error: float = 0.05, z: float = 4.0, level: float = LEVEL
) -> MarginAgreement:
    """Agreement on the samples FP32 decides clearly, where a flip is evidence of a broken build.

    Softmax ignores a per-sample shift of the logits, so both are centred per sample. The scale
    s is the RMS of FP32's centred logits over the whole set: the model's own logit unit, taken
    from FP32 only, so the candidate's error cannot raise the bar it is judged by. A healthy
    INT8 error is modelled as independent per-logit noise of RMS ``healthy_rel_error`` * s; the
    gap it opens between two logits then has sd sqrt(2) * healthy_rel_error * s, and a sample is
    decisive when FP32's top-1 minus top-2 logit exceeds ``z`` of those sds:
    margin > allowance = z * sqrt(2) * healthy_rel_error * s. Under the healthy model a decisive
    sample flips to a given rival with probability below Phi(-z) (3e-5 at z = 4), so decisive
    flips stay near zero on near-tied logits that any noise reorders, and count real breakage.

    Raises:
        UsageError: shapes differ, fewer than two classes, or non-finite logits.
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[1] < 2 or ref.shape[0] == 0:
        raise UsageError(f"margin agreement needs two (samples, classes >= 2) logit arrays of one shape, got {ref.shape} and {cand.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        raise UsageError("margin agreement needs finite logits")
    if not healthy_rel_error > 0 or not z > 0:
        raise UsageError("healthy_rel_error and z must be positive")
    ref_c = ref - ref.mean(1, keepdims=True)
    err_c = (cand - ref) - (cand - ref).mean(1, keepdims=True)
    scale = float(np.sqrt(np.mean(ref_c * ref_c)))
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    allowance = z * math.sqrt(2.0) * healthy_rel_error * scale
    flipped = ref.argmax(1) != cand.argmax(1)
    decisive = margin > allowance
    n_dec, n_dec_flips = int(decisive.sum()), int((decisive & flipped).sum())
    rel_error = float(np.sqrt(np.mean(err_c * err_c)) / scale) if scale > 0 else (0.0 if not err_c.any() else None)
    agreement = agreement_interval(n_dec - n_dec_flips, n_dec, level) if n_dec else None
    return MarginAgreement(
        int(ref.shape[0]), int(flipped.sum()), n_dec, n_dec_flips, allowance, scale, rel_error, healthy_rel_error, z, agreement
    )
