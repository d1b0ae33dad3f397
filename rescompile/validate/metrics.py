"""Accuracy and agreement metrics over logits: plain typed results that say what they measured, with error bars.

:class:`Metrics` (accuracy of both runners and the drop, agreement, per-class delta) is what
:func:`compare_outputs` returns and what :class:`rescompile.validate.run.Measurement` holds; its
``to_dict`` is the matching part of ``report.json`` and ``deploy.json``. A new metric is a new
field here (it reaches report.json through ``to_dict``, is read back by ``from_dict``), and a gate
over it is one row in :data:`rescompile.validate.gates.SPECS`.

Every accuracy number carries its 95% interval (docs/statistics.md): the paired top-1 drop
(Tango's score interval, exact McNemar p) when there are labels, the top-1 agreement
(Clopper-Pearson), the mean logit cosine (Student's t), the margin-aware agreement (decisive
samples only), and each class's paired drop (Bonferroni-adjusted for the number of classes, Holm p).
All are analytic: the same logits give the same report, byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rescompile.errors import UsageError
from rescompile.validate.stats import (
    DropEstimate,
    MarginAgreement,
    MeanEstimate,
    PairedCounts,
    ProportionEstimate,
    agreement_interval,
    class_counts,
    margin_agreement,
    mean_interval,
    per_class_drop,
    top1_drop,
)


@dataclass
class TopK:
    """One runner's accuracy against the labels."""

    top1: float | None  # percent, None without labels
    top5: float | None


@dataclass
class Accuracy:
    """Top-1/top-5 of the reference and the candidate, and the candidate's top-1 drop (points; None without labels).

    ``top1_drop_interval``: the paired drop (FP32 minus candidate) with its 95% interval, the
    discordant counts (``ref_only`` b, ``cand_only`` c, of ``n``) and the exact McNemar p-values.
    """

    reference: TopK
    candidate: TopK
    top1_drop: float | None = None
    top1_drop_interval: DropEstimate | None = None


@dataclass
class Agreement:
    """How closely the candidate's logits follow the reference's, with intervals.

    ``top1_interval``: the top-1 agreement's Clopper-Pearson interval (percent); ``cosine_interval``:
    the mean logit cosine's t interval; ``margin``: agreement on the decisive samples only (those
    whose FP32 top-1 margin no healthy INT8 error can overturn; its ``agreement`` is None when none is).
    """

    top1: float  # percent of samples where candidate and reference agree on the class
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    mean_abs_error: float
    top1_interval: ProportionEstimate | None = None
    cosine_interval: MeanEstimate | None = None
    margin: MarginAgreement | None = None


@dataclass
class ClassDelta:
    """One class's top-1 under both and ``delta`` = candidate minus reference (points; negative: the candidate loses).

    ``drop`` is the paired drop (reference minus candidate) with its interval at the Bonferroni-adjusted
    level 1 - 0.05/K (K classes), ``p_holm`` its Holm-adjusted one-sided exact McNemar p-value.
    """

    label: int
    reference_top1: float
    candidate_top1: float
    delta: float
    samples: int
    drop: DropEstimate | None = None
    p_holm: float | None = None


def drop_text(d: DropEstimate | None) -> str:
    """``0.65 pt [-0.20, 1.50]`` (points, the estimate's interval), or "n/a"."""
    return "n/a" if d is None else f"{d.point:.2f} pt [{d.lo:.2f}, {d.hi:.2f}]"


def proportion_text(p: ProportionEstimate | None) -> str:
    """``99.60% [99.21, 99.83]`` (percent, Clopper-Pearson), or "n/a"."""
    return "n/a" if p is None else f"{p.point:.2f}% [{p.lo:.2f}, {p.hi:.2f}]"


def interval_rows(acc: Accuracy, agr: Agreement) -> list[tuple[str, str]]:
    """The accuracy metrics with their 95% intervals, as (label, text) rows every renderer shows."""
    rows: list[tuple[str, str]] = []
    d = acc.top1_drop_interval
    if d is not None:
        counts = f"of {d.n:g}: {d.ref_only:g} only FP32 right, {d.cand_only:g} only the candidate"
        rows.append(("top-1 drop (95% CI)", f"{drop_text(d)}, McNemar p = {d.p_exact:.3g} ({counts})"))
    if agr.top1_interval is not None:
        rows.append(("top-1 agreement (95% CI)", proportion_text(agr.top1_interval)))
    c = agr.cosine_interval
    if c is not None:
        rows.append(("logit cosine mean (95% CI)", f"{c.point:.5f} [{c.lo:.5f}, {c.hi:.5f}]"))
    ma = agr.margin
    if ma is not None:
        shown = "n/a (no decisive sample)" if ma.agreement is None else proportion_text(ma.agreement)
        rows.append(
            (
                "margin-aware agreement (95% CI)",
                f"{shown} on {ma.decisive} decisive of {ma.n} samples, {ma.decisive_flips} decisive flip(s)",
            )
        )
    return rows


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> TopK:
    if labels is None or len(labels) == 0:
        return TopK(None, None)
    top1 = float(np.mean(logits.argmax(1) == labels) * 100.0)
    k = min(5, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top5 = float(np.mean((topk == labels[:, None]).any(1)) * 100.0)
    return TopK(top1, top5)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    num = (ref * cand).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    err = np.abs(ref - cand)
    agreed = int(np.sum(ref.argmax(1) == cand.argmax(1)))
    margin = margin_agreement(ref, cand) if ref.shape[1] >= 2 else None
    return Agreement(
        top1=float(np.mean(ref.argmax(1) == cand.argmax(1)) * 100.0),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        top1_interval=agreement_interval(agreed, len(ref)),
        cosine_interval=mean_interval(cos, floor=-1.0, ceil=1.0),
        margin=margin,
    )


def per_class_delta(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> list[ClassDelta]:
    """Top-1 per class of reference and candidate, worst drop first."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ref_hits = np.bincount(inverse, weights=reference.argmax(1) == labels, minlength=len(classes))
    cand_hits = np.bincount(inverse, weights=candidate.argmax(1) == labels, minlength=len(classes))
    drops = {r.label: r for r in per_class_drop(class_counts(reference, candidate, labels)).classes}
    out = [
        ClassDelta(
            int(c),
            float(r / n * 100.0),
            float(k / n * 100.0),
            float((k - r) / n * 100.0),
            int(n),
            drops[int(c)].estimate,
            drops[int(c)].p_holm,
        )
        for c, r, k, n in zip(classes, ref_hits, cand_hits, counts, strict=True)
    ]
    return sorted(out, key=lambda d: (d.delta, d.label))


@dataclass
class Metrics:
    """What comparing two sets of logits measured: :class:`Accuracy`, :class:`Agreement`, :class:`ClassDelta` (worst first)."""

    accuracy: Accuracy
    agreement: Agreement
    per_class: list[ClassDelta] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": asdict(self.accuracy), "agreement": asdict(self.agreement), "per_class": [asdict(d) for d in self.per_class]}


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> Metrics:
    """Accuracy of both, agreement, per-class delta (worst first): the metric part of a report.

    Raises:
        UsageError: the two sets of logits do not have the same shape (different models or data).
    """
    if reference.shape != candidate.shape:
        raise UsageError(
            f"reference logits are {reference.shape} but candidate logits are {candidate.shape}",
            hint="the reference and the candidate must be the same model on the same inputs",
        )
    if not np.isfinite(candidate).all():
        raise UsageError("the candidate produced NaN or Inf logits")
    ref_acc, cand_acc = accuracy(reference, labels), accuracy(candidate, labels)
    drop = None if ref_acc.top1 is None or cand_acc.top1 is None else ref_acc.top1 - cand_acc.top1
    interval = None
    if drop is not None and labels is not None:
        pc = PairedCounts.from_logits(reference, candidate, labels)
        interval = top1_drop(pc.ref_only, pc.cand_only, pc.n)
    return Metrics(
        Accuracy(ref_acc, cand_acc, drop, interval),
        agreement(reference, candidate),
        per_class_delta(reference, candidate, labels) if labels is not None else [],
    )
