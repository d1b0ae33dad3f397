"""The equalize stage: cross-layer equalization and bias absorption on the simplified graph, parity-checked.

The graph work is :mod:`rescompile.graph.equalize` (pure functions); this module adds what needs data: the
per-channel statistics that set the absorbed biases, taken from the *calibration* inputs (never the validation
split), and the parity check of the result against the simplified model on those same inputs through ONNX
Runtime, as :mod:`rescompile.simplify` checks its rewrite (a ParityError, exit 1, when outputs move beyond
``atol + rtol * max|reference|`` or the cosine of any sample drops below ``min_cosine``).

The ``r1`` of an affine pair (a normalization's per-channel scale and shift -> ReLU -> Conv(s), which has no weights
on its first side) is the range of the tensor its Convs read, measured here: ``max |x|`` per channel over the
calibration inputs, the quantity per-tensor INT8 must cover there (docs/equalize.md).

Absorbed bias per channel (paper §4.1.2, data-based): ``c = max(0, min(mean - 3 std, observed min))`` of the first
Conv's output over the calibration inputs. The paper's ``beta - 3 gamma`` comes from the BatchNorm folded in by
``simplify`` (no longer in the graph), so mean and std are measured; capping ``c`` at the observed minimum keeps
``ReLU(y - c) + c == ReLU(y)`` exact on every calibration input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from rescompile.errors import ParityError, UsageError
from rescompile.graph.equalize import MAX_SWEEPS, TOLERANCE, Equalization, absorb_biases, absorbable, equalize, find_affine_pairs

Batches = Callable[[], Iterable[np.ndarray]]  # a fresh pass over the calibration inputs (float32 N,C,H,W) per call


@dataclass(frozen=True)
class EqualizeConfig:
    absorb: bool = True  # bias absorption where it is exact (graph.equalize.absorbable)
    sigmas: float = 3.0  # c = mean - sigmas * std (the paper's 3), capped at the observed minimum
    max_sweeps: int = MAX_SWEEPS
    tolerance: float = TOLERANCE
    atol: float = 1e-4  # parity, as simplify's
    rtol: float = 1e-3
    min_cosine: float = 0.99999


@dataclass
class EqualizeResult:
    """The equalized model, what was done, and its parity with the simplified model on the calibration inputs."""

    equalization: Equalization
    max_abs_error: float
    tolerance: float
    min_cosine: float
    samples: int

    @property
    def model(self) -> onnx.ModelProto:
        return self.equalization.model

    def to_dict(self) -> dict[str, Any]:
        """``report.json``'s ``stages.equalize``."""
        eq = self.equalization
        scales = [(p.scale_min, p.scale_max) for p in eq.pairs] + [(a.scale_min, a.scale_max) for a in eq.affine]
        return {
            "pairs_equalized": len(eq.pairs),
            "affine_pairs_equalized": len(eq.affine),
            "pairs_skipped": len(eq.skipped),
            "biases_absorbed": sum(p.absorption == "done" for p in eq.pairs),
            "scale_min": min((a for a, _ in scales), default=1.0),
            "scale_max": max((b for _, b in scales), default=1.0),
            "sweeps": eq.sweeps,
            "converged": eq.converged,
            "parity": {
                "samples": self.samples,
                "max_abs_error": self.max_abs_error,
                "tolerance": self.tolerance,
                "min_cosine": self.min_cosine,
                "data": "calibration",
            },
            "convs": eq.touched,
            "affines": eq.affines,
            "pairs": [p.to_dict() for p in eq.pairs],
            "affine_pairs": [a.to_dict() for a in eq.affine],
            "skipped": [s.to_dict() for s in eq.skipped],
        }


def _session(model: onnx.ModelProto) -> Any:
    from rescompile.runtime.sessions import ort_session

    return ort_session(model, optimize=False)


def _run(sess: Any, x: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    return [np.asarray(a) for a in sess.run(names, {sess.get_inputs()[0].name: x})]


class _ChannelStats:
    """Running per-channel count, sum, sum of squares and minimum of an N,C,... tensor (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.s: np.ndarray | None = None
        self.ss: np.ndarray | None = None
        self.lo: np.ndarray | None = None

    def update(self, y: np.ndarray) -> None:
        v = np.moveaxis(y.astype(np.float64), 1, 0).reshape(y.shape[1], -1)
        s, ss, lo = v.sum(axis=1), (v * v).sum(axis=1), v.min(axis=1)
        self.n += v.shape[1]
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)

    def shift(self, sigmas: float) -> np.ndarray:
        """``max(0, min(mean - sigmas * std, min))`` per channel."""
        if self.s is None or self.ss is None or self.lo is None:
            raise ValueError("no data")
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))
        return np.maximum(np.minimum(mean - sigmas * std, self.lo), 0.0)


def _shifts(model: onnx.ModelProto, tensors: list[str], batches: Batches, sigmas: float) -> dict[str, np.ndarray]:
    from rescompile.calibrate.collect import with_outputs

    sess = _session(with_outputs(model, tensors))
    stats = {t: _ChannelStats() for t in tensors}
    for x in batches():
        for t, y in zip(tensors, _run(sess, x, tensors), strict=True):
            stats[t].update(y)
    return {t: s.shift(sigmas) for t, s in stats.items() if s.n}


def channel_maxima(model: onnx.ModelProto, tensors: list[str], batches: Batches) -> dict[str, np.ndarray]:
    """``max |x|`` per channel (axis 1) of each of ``tensors`` over the calibration inputs."""
    from rescompile.calibrate.collect import with_outputs

    sess = _session(with_outputs(model, tensors))
    out: dict[str, np.ndarray] = {}
    for x in batches():
        for t, y in zip(tensors, _run(sess, x, tensors), strict=True):
            m = np.abs(np.moveaxis(y.astype(np.float64), 1, 0).reshape(y.shape[1], -1)).max(axis=1)
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def _outputs(model: onnx.ModelProto, batches: Batches) -> np.ndarray:
    sess = _session(model)
    outs = [_run(sess, x)[0] for x in batches()]
    if not outs:
        raise UsageError("equalize: no calibration inputs to check parity on")
    return np.concatenate(outs)


def check_outputs(reference: np.ndarray, candidate: np.ndarray, cfg: EqualizeConfig, stage: str = "equalize") -> tuple[float, float, float]:
    """``(max abs error, tolerance, min per-sample cosine)``; a ParityError naming ``stage`` beyond tolerance."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    if ref.shape != cand.shape:
        raise ParityError(f"{stage}: output shape changed from {reference.shape} to {candidate.shape}")
    err = float(np.max(np.abs(ref - cand))) if ref.size else 0.0
    tol = cfg.atol + cfg.rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(norms > 0, (ref * cand).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    worst = float(cos.min()) if cos.size else 1.0
    if not np.isfinite(err) or err > tol or not worst >= cfg.min_cosine:
        raise ParityError(
            f"{stage}: the rewritten model differs from the simplified one on the calibration inputs by {err:.3g} "
            f"(tolerance {tol:.3g}), worst cosine {worst:.6f} (minimum {cfg.min_cosine})"
        )
    return err, tol, worst


def equalize_model(model: onnx.ModelProto, batches: Batches, cfg: EqualizeConfig = EqualizeConfig()) -> EqualizeResult:
    """Equalize ``model`` (the simplified, BatchNorm-folded graph), absorb biases where exact, check parity.

    Args:
        model: the simplified model.
        batches: a fresh pass over the calibration inputs per call (statistics and parity; never validation data).
        cfg: the settings.

    Raises:
        ParityError: the result's outputs differ from ``model``'s on the calibration inputs (exit 1).
    """
    reference = _outputs(model, batches)
    affine, _ = find_affine_pairs(model)
    ranges = channel_maxima(model, [a.tensor for a in affine], batches) if affine else {}
    eq = equalize(model, max_sweeps=cfg.max_sweeps, tolerance=cfg.tolerance, ranges=ranges)
    if cfg.absorb:
        tensors = [r.pair.tensor for r in eq.pairs if absorbable(eq.model, r.pair) is None]
        eq = absorb_biases(eq, _shifts(eq.model, tensors, batches, cfg.sigmas) if tensors else {})
    else:
        for r in eq.pairs:
            r.absorption = "off"
    onnx.checker.check_model(eq.model)
    err, tol, cos = check_outputs(reference, _outputs(eq.model, batches), cfg)
    return EqualizeResult(eq, err, tol, cos, len(reference))
