"""Gates: thresholds over report metrics; each result names the metric, its value and the threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rescompile.config import Gates
from rescompile.errors import UsageError


@dataclass
class GateResult:
    name: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_thresholds(gates: Gates) -> None:
    """Raise UsageError for thresholds that make no sense."""
    for name, value, lo, hi in (
        ("--max-top1-drop", gates.max_top1_drop, 0.0, 100.0),
        ("--min-agreement", gates.min_agreement, 0.0, 100.0),
        ("--min-cosine", gates.min_cosine, -1.0, 1.0),
    ):
        if value is not None and not (lo <= value <= hi):
            raise UsageError(f"{name} {value} is out of range [{lo:g}, {hi:g}]")


def evaluate_gates(report: dict[str, Any], gates: Gates) -> list[GateResult]:
    """Check ``report`` (as written by validation) against ``gates``."""
    check_thresholds(gates)
    out: list[GateResult] = []
    acc = report["accuracy"]
    if gates.max_top1_drop is not None:
        drop = acc.get("top1_drop")
        ok = drop is not None and drop <= gates.max_top1_drop
        shown = "n/a (no labels)" if drop is None else f"{drop:.2f} points"
        out.append(GateResult("max-top1-drop", "top1_drop", drop, gates.max_top1_drop, ok,
                              f"top1_drop = {shown}, threshold <= {gates.max_top1_drop:g} points"))  # fmt: skip
    if gates.min_agreement is not None:
        v = report["agreement"]["top1"]
        out.append(GateResult("min-agreement", "agreement.top1", v, gates.min_agreement, v >= gates.min_agreement,
                              f"agreement.top1 = {v:.2f}%, threshold >= {gates.min_agreement:g}%"))  # fmt: skip
    if gates.min_cosine is not None:
        v = report["agreement"]["cosine_mean"]
        out.append(GateResult("min-cosine", "agreement.cosine_mean", v, gates.min_cosine, v >= gates.min_cosine,
                              f"agreement.cosine_mean = {v:.5f}, threshold >= {gates.min_cosine:g}"))  # fmt: skip
    return out
