"""Accuracy and agreement metrics over logits: plain results that say what they measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Accuracy:
    top1: float | None  # percent, None without labels
    top5: float | None


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


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> Accuracy:
    if labels is None or len(labels) == 0:
        return Accuracy(None, None)
    top1 = float(np.mean(logits.argmax(1) == labels) * 100.0)
    k = min(5, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top5 = float(np.mean((topk == labels[:, None]).any(1)) * 100.0)
    return Accuracy(top1, top5)


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
    out = []
    for c in np.unique(labels):
        m = labels == c
        r = float(np.mean(reference[m].argmax(1) == c) * 100.0)
        k = float(np.mean(candidate[m].argmax(1) == c) * 100.0)
        out.append(ClassDelta(int(c), r, k, k - r, int(m.sum())))
    return sorted(out, key=lambda d: (d.delta, d.label))


def as_dict(obj: object) -> dict[str, object]:
    return asdict(obj)  # type: ignore[call-overload, no-any-return]
