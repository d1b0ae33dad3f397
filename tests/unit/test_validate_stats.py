"""validate/stats.py: intervals against published values, coverage by simulation, gate decisions, margin agreement."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.errors import UsageError
from rescompile.validate import stats as S

# ---------------------------------------------------------------- the distributions


def _binom_cdf_exact(k: int, n: int, p: Fraction) -> float:
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)))


@pytest.mark.parametrize("n, p", [(1, Fraction(1, 2)), (7, Fraction(1, 3)), (40, Fraction(1, 2)), (120, Fraction(9, 10))])
def test_binomial_cdf_matches_exact_rational_sums(n, p):
    for k in range(n + 1):
        assert S.binom_cdf(k, n, float(p)) == pytest.approx(_binom_cdf_exact(k, n, p), rel=1e-11, abs=1e-300)


def test_incomplete_beta_closed_forms():
    for x in (0.0, 1e-9, 0.1, 0.5, 0.93, 1.0):
        assert S.betainc(1.0, 1.0, x) == pytest.approx(x, abs=1e-15)
        assert S.betainc(3.0, 1.0, x) == pytest.approx(x**3, abs=1e-15)
        assert S.betainc(1.0, 4.5, x) == pytest.approx(1 - (1 - x) ** 4.5, abs=1e-14)
    assert S.betainc(2.5, 2.5, 0.5) == pytest.approx(0.5, abs=1e-15)  # symmetry
    assert S.beta_quantile(S.betainc(30.0, 70.0, 0.27), 30.0, 70.0) == pytest.approx(0.27, abs=1e-13)


def test_incomplete_beta_agrees_with_scipy_where_installed():
    special = pytest.importorskip("scipy.special")  # not a dependency; a cross-check when present
    rng = np.random.default_rng(3)
    for a, b, x in zip(rng.uniform(0.2, 3000, 300), rng.uniform(0.2, 3000, 300), rng.random(300), strict=True):
        assert S.betainc(float(a), float(b), float(x)) == pytest.approx(float(special.betainc(a, b, x)), abs=1e-10)


# ---------------------------------------------------------------- agreement: published values


def test_wilson_and_clopper_pearson_for_81_of_263_match_newcombe_1998():
    # Newcombe RG, "Two-sided confidence intervals for the single proportion: comparison of seven
    # methods", Stat Med 1998;17:857-872, example 81/263: Wilson 0.2553-0.3662, exact 0.2527-0.3676.
    assert S.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert S.clopper_pearson_interval(81, 263) == pytest.approx((0.2527, 0.3676), abs=1e-4)
    est = S.agreement_interval(81, 263)
    assert est.method == "clopper-pearson" and est.point == pytest.approx(100 * 81 / 263)
    assert (est.lo, est.hi) == pytest.approx((25.27, 36.76), abs=1e-2)
    assert S.agreement_interval(81, 263, method="wilson").lo == pytest.approx(25.53, abs=1e-2)


def test_clopper_pearson_closed_forms_at_the_edges():
    # k = 0: hi = 1 - (alpha/2)^(1/n); k = n: lo = (alpha/2)^(1/n)
    for n in (1, 5, 60, 2000):
        assert S.clopper_pearson_interval(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), abs=1e-12)
        assert S.clopper_pearson_interval(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), abs=1e-12)
        lo, hi = S.wilson_interval(n, n)
        assert hi == 1.0 and 0 < lo < 1


@pytest.mark.parametrize(
    "call", [lambda: S.agreement_interval(0, 0), lambda: S.agreement_interval(5, 4), lambda: S.agreement_interval(-1, 4)]
)
def test_agreement_refuses_impossible_counts(call):
    with pytest.raises(UsageError):
        call()


def test_agreement_refuses_a_bad_level_or_method():
    with pytest.raises(UsageError, match="level"):
        S.agreement_interval(3, 4, level=1.0)
    with pytest.raises(UsageError, match="method"):
        S.agreement_interval(3, 4, method="wald")


# ---------------------------------------------------------------- paired drop: published values


def test_newcombe_paired_interval_matches_fagerland_cavo_example():
    # Cavo et al. 2012 table (a, b, c, d) = (59, 6, 16, 80): Newcombe square-and-add -0.1186 to -0.0046
    # (Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, 2017, ch. 8).
    assert S.newcombe_interval(59, 6, 16, 161) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    est = S.top1_drop(6, 16, 161, method="newcombe", both=59)
    assert est.point == pytest.approx(100 * -10 / 161) and (est.lo, est.hi) == pytest.approx((-11.86, -0.46), abs=1e-2)


def test_tango_and_newcombe_match_fagerland_2014_bentur_example():
    # Bentur et al. 2009 table (1, 1, 7, 12), n = 21, in Fagerland, Lydersen & Laake, "Recommended tests and
    # confidence intervals for paired binomial proportions", Stat Med 2014;33:2850: Tango -0.517 to -0.026,
    # Newcombe -0.507 to -0.026.
    assert S.tango_interval(1, 7, 21) == pytest.approx((-0.517, -0.026), abs=5e-4)
    assert S.newcombe_interval(1, 1, 7, 21) == pytest.approx((-0.507, -0.026), abs=5e-4)


def test_tango_bounds_are_where_the_score_statistic_reaches_z():
    z = S.normal_quantile(0.975)
    for b, c, n in [(6, 16, 161), (12, 4, 400), (0, 3, 50), (30, 0, 90)]:
        lo, hi = S.tango_interval(b, c, n)
        assert S.tango_score(b, c, n, lo) == pytest.approx(z, abs=1e-6)
        assert S.tango_score(b, c, n, hi) == pytest.approx(-z, abs=1e-6)


def test_tango_with_no_discordant_pair_has_the_closed_form_bound():
    # b = c = 0: the score bound solves n d / (1 - d) = z^2, so d = z^2 / (n + z^2) on either side
    z = S.normal_quantile(0.975)
    for n in (1, 20, 1000):
        est = S.top1_drop(0, 0, n)
        assert est.point == 0.0 and (est.lo, est.hi) == pytest.approx((-100 * z * z / (n + z * z), 100 * z * z / (n + z * z)), abs=1e-9)
        assert (est.p_exact, est.p_drop) == (1.0, 1.0)


def test_all_discordant_edges_stay_in_range():
    assert S.tango_interval(10, 0, 10)[1] == 1.0 and S.tango_interval(0, 10, 10)[0] == -1.0
    est = S.top1_drop(10, 0, 10)
    assert est.point == 100.0 and est.hi == 100.0 and 0 < est.lo < 100


def test_exact_mcnemar_against_rational_binomial_sums():
    two, one = S.mcnemar_exact(6, 16)
    assert two == pytest.approx(2 * _binom_cdf_exact(6, 22, Fraction(1, 2)), rel=1e-11)
    assert one == pytest.approx(1 - _binom_cdf_exact(5, 22, Fraction(1, 2)), rel=1e-11)  # P(X >= 6)
    assert S.mcnemar_exact(16, 6)[1] == pytest.approx(_binom_cdf_exact(6, 22, Fraction(1, 2)), rel=1e-11)
    assert S.mcnemar_exact(5, 5)[0] == 1.0 and S.mcnemar_exact(0, 0) == (1.0, 1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: S.top1_drop(1, 1, 0),
        lambda: S.top1_drop(5, 6, 10),
        lambda: S.top1_drop(-1, 0, 10),
        lambda: S.top1_drop(1, 1, 10, method="newcombe"),
    ],
)
def test_drop_refuses_impossible_tables(call):
    with pytest.raises(UsageError):
        call()


def test_paired_counts_from_correctness_and_logits():
    ref_ok = np.array([1, 1, 1, 0, 0, 1], bool)
    cand_ok = np.array([1, 0, 0, 1, 0, 1], bool)
    assert S.PairedCounts.from_correct(ref_ok, cand_ok) == S.PairedCounts(ref_only=2, cand_only=1, n=6, both=2)
    labels = np.array([0, 1, 2])
    ref = np.eye(3)
    cand = np.eye(3)[[0, 2, 2]]
    assert S.PairedCounts.from_logits(ref, cand, labels) == S.PairedCounts(1, 0, 3, 2)


# ---------------------------------------------------------------- coverage


def test_agreement_intervals_cover_95_percent_in_simulation():
    rng = np.random.default_rng(20261206)
    n, p = 120, 0.93
    ks = rng.binomial(n, p, size=2000)
    for interval in (S.clopper_pearson_interval, S.wilson_interval):
        covered = np.mean([lo <= p <= hi for lo, hi in (interval(int(k), n) for k in ks)])
        assert 0.93 <= covered <= 0.975, (interval.__name__, covered)


@pytest.mark.parametrize("method", ["tango", "newcombe"])
def test_paired_drop_intervals_cover_95_percent_in_simulation(method):
    rng = np.random.default_rng(7)
    n, probs = 300, [0.85, 0.03, 0.01, 0.11]  # both right, FP32 only, INT8 only, both wrong
    truth = 100 * (probs[1] - probs[2])
    tables = rng.multinomial(n, probs, size=2000)
    hits = 0
    for a, b, c, _ in tables:
        est = S.top1_drop(int(b), int(c), n, method=method, both=int(a))
        hits += est.lo <= truth <= est.hi
    assert 0.93 <= hits / 2000 <= 0.975


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_is_repeatable_byte_for_byte_and_seeded():
    a = S.bootstrap_drop(40, 15, 2000, seed=5)
    assert repr(a) == repr(S.bootstrap_drop(40, 15, 2000, seed=5))
    few = {(e.lo, e.hi) for e in (S.bootstrap_drop(40, 15, 2000, replicates=99, seed=s) for s in range(5))}
    assert len(few) > 1  # the seed is used (10,000 replicates land on the same 1/n lattice points)
    assert a.method == "bootstrap" and a.lo <= a.point <= a.hi


def test_bootstrap_agrees_with_tango_on_large_n():
    b, c, n = 600, 200, 40_000  # drop 1 pt, 2% discordant
    boot, tango = S.bootstrap_drop(b, c, n, seed=0), S.top1_drop(b, c, n)
    assert boot.point == tango.point == 1.0
    assert boot.lo == pytest.approx(tango.lo, abs=0.03) and boot.hi == pytest.approx(tango.hi, abs=0.03)


# ---------------------------------------------------------------- samples to settle and decisions


def _straddles(lo, hi, t, comparison):
    return S._side(lo, hi, t, comparison) == "straddles"


@pytest.mark.parametrize("b, c, n, t", [(12, 4, 400, 1.0), (3, 1, 200, 0.5), (5, 9, 300, 0.0), (2, 0, 60, 1.5)])
def test_samples_to_settle_is_the_smallest_n_whose_scaled_interval_settles(b, c, n, t):
    est = S.top1_drop(b, c, n)
    assert _straddles(est.lo, est.hi, t, "<=")
    m = S.samples_to_settle(est, t, "<=")
    assert m is not None and m > n
    lo, hi = S.tango_interval(b * m / n, c * m / n, m)
    assert not _straddles(100 * lo, 100 * hi, t, "<=")
    lo, hi = S.tango_interval(b * (m - 1) / n, c * (m - 1) / n, m - 1)
    assert _straddles(100 * lo, 100 * hi, t, "<=")


def test_samples_to_settle_for_agreement_with_both_methods():
    for method in S.AGREEMENT_METHODS:
        est = S.agreement_interval(970, 1000, method=method)  # 97.0% against a 96.5% floor
        assert _straddles(est.lo, est.hi, 96.5, ">=")
        m = S.samples_to_settle(est, 96.5, ">=")
        assert m is not None
        r = S.agreement_interval(970 * m / 1000, m, method=method)
        assert r.lo >= 96.5 and S.agreement_interval(970 * (m - 1) / 1000, m - 1, method=method).lo < 96.5


def test_samples_to_settle_edges():
    settled = S.top1_drop(0, 0, 5000)
    assert S.samples_to_settle(settled, 1.0, "<=") == 5000  # already below
    on_threshold = S.top1_drop(6, 2, 400)  # point drop exactly 1.0
    assert S.samples_to_settle(on_threshold, 1.0, "<=") is None


def test_decide_point_and_confident_modes():
    # drop 0.8 pt, interval (0.2, 1.6), threshold 1: point passes, confident does not, straddles
    d = S.decide(0.8, 0.2, 1.6, 1.0, "<=", "point", samples_to_settle=1234)
    assert d.passed and d.straddles and d.samples_to_settle == 1234
    assert not S.decide(0.8, 0.2, 1.6, 1.0, "<=", "confident").passed
    safe = S.decide(0.3, 0.1, 0.9, 1.0, "<=", "confident", samples_to_settle=99)
    assert safe.passed and safe.side == "safe" and safe.samples_to_settle is None
    assert S.decide(2.0, 1.2, 3.0, 1.0, "<=", "point").side == "unsafe"
    # agreement: >= comparison
    assert S.decide(99.0, 98.5, 99.4, 98.0, ">=", "confident").passed
    assert not S.decide(98.4, 97.5, 99.0, 98.0, ">=", "confident").passed
    assert S.decide(98.4, 97.5, 99.0, 98.0, ">=", "point").passed
    assert S.decide(1.0, 0.5, 1.0, 1.0, "<=", "confident").passed  # on the threshold passes, as today


@pytest.mark.parametrize(
    "args", [(1.0, 0.0, 2.0, 1.0, "<", "point"), (1.0, 0.0, 2.0, 1.0, "<=", "sure"), (3.0, 0.0, 2.0, 1.0, "<=", "point")]
)
def test_decide_refuses_nonsense(args):
    with pytest.raises(UsageError):
        S.decide(*args)


def test_decide_estimate_fills_in_samples_to_settle():
    est = S.top1_drop(12, 4, 400)
    d = S.decide_estimate(est, 1.0, "<=", "confident")
    assert not d.passed and d.straddles and d.samples_to_settle == S.samples_to_settle(est, 1.0, "<=")
    assert S.decide_estimate(est, 1.0, "<=", "point").passed is False  # 2.0 pt > 1
    assert S.decide_estimate(S.top1_drop(0, 0, 20_000), 1.0, "<=", "confident").samples_to_settle is None


# ---------------------------------------------------------------- per class


def test_holm_adjusted_p_values():
    assert S.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert S.holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert S.holm_adjust([]) == []


def _counts():
    return {
        0: S.PairedCounts(2, 2, 100, 90),
        1: S.PairedCounts(9, 1, 100, 85),  # the class INT8 hurts: 8 pt
        2: S.PairedCounts(1, 0, 100, 95),
        3: S.PairedCounts(0, 0, 0, 0),  # no samples: left out of K
    }


def test_per_class_drop_uses_bonferroni_level_and_sorts_worst_first():
    drops = S.per_class_drop(_counts())
    assert [r.label for r in drops.classes] == [1, 2, 0]
    assert drops.class_level == pytest.approx(1 - 0.05 / 3) and drops.worst.estimate.level == drops.class_level
    plain = S.top1_drop(9, 1, 100)
    assert drops.worst.estimate.point == 8.0 and drops.worst.estimate.lo < plain.lo and drops.worst.estimate.hi > plain.hi
    assert drops.worst.p_holm == pytest.approx(min(1.0, 3 * plain.p_drop))


def test_class_gate_sees_a_class_the_aggregate_hides():
    counts = _counts()
    b = sum(c.ref_only for c in counts.values())
    c = sum(c.cand_only for c in counts.values())
    n = sum(c.n for c in counts.values())
    assert S.top1_drop(b, c, n).point <= 3.0  # the aggregate passes a 3 pt gate
    point = S.decide_classes(S.per_class_drop(counts), 3.0, "point")
    assert not point.passed and point.point == 8.0


def test_class_gate_confident_mode_and_settling():
    healthy = {k: S.PairedCounts(0, 0, 2000, 1900) for k in range(10)}
    d = S.decide_classes(S.per_class_drop(healthy), 1.0, "confident")
    assert d.passed and d.side == "safe"
    small = {k: S.PairedCounts(1, 1, 100, 90) for k in range(10)}
    d = S.decide_classes(S.per_class_drop(small), 5.0, "confident")
    assert not d.passed and d.straddles and d.samples_to_settle is not None and d.samples_to_settle > 1000
    # at the settled size each class's rescaled Bonferroni interval sits below the threshold
    m = d.samples_to_settle / 10
    lo, hi = S.tango_interval(m / 100, m / 100, m, 1 - 0.05 / 10)
    assert 100 * hi <= 5.0
    assert S.decide_classes(S.per_class_drop(small), 5.0, "point").passed


def test_class_gate_with_one_class_matches_the_interval():
    # K = 1: Holm's test at 2.5% one-sided is the two-sided 95% Tango interval's upper bound
    for b, c, n in [(3, 1, 200), (8, 2, 500), (0, 0, 400), (15, 10, 1000)]:
        est = S.top1_drop(b, c, n)
        for t in (0.5, 1.0, 2.0, 3.0):
            if abs(est.hi - t) < 1e-6:
                continue
            d = S.decide_classes(S.per_class_drop({0: S.PairedCounts(b, c, n)}), t, "confident")
            assert d.passed == (est.hi <= t), (b, c, n, t)


def test_class_counts_from_logits():
    labels = np.array([0, 0, 1, 1])
    ref = np.eye(2)[[0, 0, 1, 1]]
    cand = np.eye(2)[[0, 1, 1, 1]]
    assert S.class_counts(ref, cand, labels) == {0: S.PairedCounts(1, 0, 2, 1), 1: S.PairedCounts(0, 0, 2, 2)}
    with pytest.raises(UsageError):
        S.per_class_drop({0: S.PairedCounts(0, 0, 0)})


# ---------------------------------------------------------------- margin-aware agreement


def _near_tied(rng, n=1000, classes=1000, offset=8.0, spread=0.3):
    return offset + spread * rng.standard_normal((n, classes))


def test_margin_agreement_ignores_flips_on_near_tied_logits():
    rng = np.random.default_rng(11)
    ref = _near_tied(rng)
    cand = ref + 0.05 * 0.3 * rng.standard_normal(ref.shape)  # 5% of the logit spread: what healthy INT8 does
    m = S.margin_agreement(ref, cand)
    assert m.flips / m.n > 0.05  # a bare agreement floor would see many disagreements ...
    assert m.decisive_flips == 0 and m.agreement is not None and m.agreement.point == 100.0  # ... none of them decisive
    assert m.decisive > 100 and m.rel_error == pytest.approx(0.05, rel=0.1)
    assert 0.9999 < float(np.mean((ref * cand).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(cand, axis=1)))


def test_margin_agreement_counts_real_breakage():
    rng = np.random.default_rng(12)
    ref = _near_tied(rng)
    broken = ref + 0.5 * 0.3 * rng.standard_normal(ref.shape)  # half the logit spread
    m = S.margin_agreement(ref, broken)
    assert m.agreement is not None and m.agreement.hi < 90.0 and m.decisive_flips > 0.1 * m.decisive
    assert m.rel_error == pytest.approx(0.5, rel=0.1)


def test_margin_agreement_is_shift_invariant_and_independent_of_the_candidate_scale():
    rng = np.random.default_rng(13)
    ref = rng.standard_normal((500, 10)) * 3
    cand = ref + 0.9 * rng.standard_normal(ref.shape)
    a = S.margin_agreement(ref, cand)
    shifted = S.margin_agreement(ref + 100.0, cand + rng.standard_normal((500, 1)) * 50)
    assert (a.decisive, a.decisive_flips, a.flips) == (shifted.decisive, shifted.decisive_flips, shifted.flips)
    assert a.allowance == pytest.approx(shifted.allowance) and a.rel_error == pytest.approx(shifted.rel_error)
    # the bar (allowance) comes from FP32 alone: a worse candidate does not lower or raise it
    assert S.margin_agreement(ref, ref + 5 * rng.standard_normal(ref.shape)).allowance == a.allowance


def test_margin_agreement_on_a_trained_like_model_and_identical_logits():
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 10, 800)
    ref = rng.standard_normal((800, 10)) + 6.0 * np.eye(10)[labels]  # confident, mostly decisive
    same = S.margin_agreement(ref, ref.copy())
    assert same.flips == 0 and same.decisive_flips == 0 and same.rel_error == 0.0 and same.decisive > 700
    assert same.decisive_flip_rate == 0.0


@pytest.mark.parametrize("cand", [np.zeros((4, 3)), np.full((4, 2), np.nan), np.zeros((4, 1))])
def test_margin_agreement_refuses_bad_logits(cand):
    ref = np.zeros((4, 2)) if cand.shape != (4, 1) else np.zeros((4, 1))
    with pytest.raises(UsageError):
        S.margin_agreement(ref, cand)


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 5000), data=st.data(), level=st.sampled_from([0.8, 0.9, 0.95, 0.99, 0.995]))
def test_agreement_interval_contains_its_point_and_stays_in_range(n, data, level):
    k = data.draw(st.integers(0, n))
    for method in S.AGREEMENT_METHODS:
        est = S.agreement_interval(k, n, level, method)
        assert 0.0 <= est.lo <= est.point <= est.hi <= 100.0
    cp = S.clopper_pearson_interval(k, n, level)
    wider = S.clopper_pearson_interval(k, n, min(0.999, level + 0.004))
    assert wider[0] <= cp[0] + 1e-12 and wider[1] >= cp[1] - 1e-12


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 5000), data=st.data(), method=st.sampled_from(S.DROP_METHODS))
def test_drop_interval_contains_its_point_and_stays_in_range(n, data, method):
    b = data.draw(st.integers(0, n))
    c = data.draw(st.integers(0, n - b))
    a = data.draw(st.integers(0, n - b - c))
    est = S.top1_drop(b, c, n, method=method, both=a)
    assert -100.0 <= est.lo <= est.point <= est.hi <= 100.0
    assert 0.0 <= est.p_drop <= 1.0 and 0.0 <= est.p_exact <= 1.0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data(), seed=st.integers(0, 3))
def test_bootstrap_interval_contains_its_point(n, data, seed):
    b = data.draw(st.integers(0, n))
    c = data.draw(st.integers(0, n - b))
    est = S.bootstrap_drop(b, c, n, replicates=200, seed=seed)
    assert -100.0 <= est.lo <= est.point <= est.hi <= 100.0


# ---------------------------------------------------------------- mean (logit cosine)


def test_t_quantile_matches_published_values():
    # Student's t table: t_{0.975} for 1, 10, 30 degrees of freedom; the normal quantile in the limit
    for df, t in ((1, 12.7062047), (10, 2.2281389), (30, 2.0422725)):
        assert S.t_quantile(0.975, df) == pytest.approx(t, abs=1e-6)
        assert S.t_quantile(0.025, df) == pytest.approx(-t, abs=1e-6)
    assert S.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_mean_interval_is_the_t_interval_clipped_and_settles():
    v = np.array([0.99, 0.995, 0.998, 0.97, 0.999, 0.996])
    est = S.mean_interval(v, floor=-1.0, ceil=1.0)
    half = S.t_quantile(0.975, 5) * v.std(ddof=1) / math.sqrt(6)
    assert (est.lo, est.hi) == pytest.approx((v.mean() - half, min(1.0, v.mean() + half)))
    one = S.mean_interval(np.array([0.5]), floor=-1.0, ceil=1.0)
    assert (one.lo, one.hi) == (-1.0, 1.0)
    m = S.samples_to_settle(est, 0.99, ">=")
    assert m is not None and m > 6
    lo, _ = S._rescaled(est, m)
    lo_before, _ = S._rescaled(est, m - 1)
    assert lo >= 0.99 > lo_before


@pytest.mark.parametrize("n", [16, 117, 122, 124, 1803])
def test_samples_to_settle_with_every_sample_agreeing_or_discordant(n):
    # k = n scaled to m samples must not round past m (a 100% agreement that straddles a 97% floor)
    est = S.agreement_interval(n, n)
    m = S.samples_to_settle(est, 99.9, ">=")
    assert m is None or m >= n
    for b, c in ((n, 0), (n - 1, 1)):
        S.samples_to_settle(S.top1_drop(b, c, n), 99.0, "<=")
