"""Accuracy and agreement metrics over logits: plain typed results that say what they measured.

:class:`Metrics` (accuracy of both runners and the drop, agreement, per-class delta) is what
:func:`compare_outputs` returns and what :class:`rescompile.validate.run.Measurement` holds; its
``to_dict`` is the matching part of ``report.json`` and ``deploy.json``. A new metric is a new
field here (it reaches report.json through ``to_dict``, is read back by ``from_dict``), and a gate
over it is one row in :data:`rescompile.validate.gates.SPECS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rescompile.errors import UsageError


@dataclass
class TopK:
    """One runner's accuracy against the labels."""

    top1: float | None  # percent, None without labels
    top5: float | None


@dataclass
class Accuracy:
    """Top-1/top-5 of the reference and the candidate, and the candidate's top-1 drop (points; None without labels)."""

    reference: TopK
    candidate: TopK
    top1_drop: float | None = None


@dataclass
class Agreement:
    top1: float  # percent of samples where candidate and reference agree on the class
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    mean_abs_error: float


@dataclass
class ClassDelta:
    label: int
    reference_top1: float
    candidate_top1: float
    delta: float
    samples: int


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
    return Agreement(
        top1=float(np.mean(ref.argmax(1) == cand.argmax(1)) * 100.0),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
    )


def per_class_delta(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> list[ClassDelta]:
    """Top-1 per class of reference and candidate, worst drop first."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ref_hits = np.bincount(inverse, weights=reference.argmax(1) == labels, minlength=len(classes))
    cand_hits = np.bincount(inverse, weights=candidate.argmax(1) == labels, minlength=len(classes))
    out = [
        ClassDelta(int(c), float(r / n * 100.0), float(k / n * 100.0), float((k - r) / n * 100.0), int(n))
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
    return Metrics(
        Accuracy(ref_acc, cand_acc, drop),
        agreement(reference, candidate),
        per_class_delta(reference, candidate, labels) if labels is not None else [],
    )
