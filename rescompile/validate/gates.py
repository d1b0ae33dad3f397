"""Gates: thresholds over report metrics; each result names the metric, its value and the threshold.

Thresholds come from flags or a YAML recipe (``--gates gates.yaml``); flags override the
recipe key by key. Nonsense thresholds are a UsageError (exit 2), a missed gate is a
GateFailed (exit 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
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
    comparison: str = "<="  # value <= threshold passes, or ">="

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for a terminal or a CI log: ``FAIL max-top1-drop: accuracy.top1_drop = ...``."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.message}"


@dataclass(frozen=True)
class _Spec:
    field: str
    flag: str
    comparison: str
    lo: float
    hi: float
    unit: str
    fmt: str


SPECS = (
    _Spec("max_top1_drop", "--max-top1-drop", "<=", 0.0, 100.0, " points", ".2f"),
    _Spec("min_agreement", "--min-agreement", ">=", 0.0, 100.0, "%", ".2f"),
    _Spec("min_cosine", "--min-cosine", ">=", -1.0, 1.0, "", ".5f"),
    _Spec("max_p99_ms", "--max-p99-ms", "<=", 0.0, math.inf, " ms", ".3f"),
    _Spec("min_speedup", "--min-speedup", ">=", 0.0, math.inf, "x", ".3f"),
)
ACCURACY_GATES = ("max_top1_drop", "min_agreement", "min_cosine")
LABEL_GATES = ("max_top1_drop",)  # need labelled validation data (rescompile.data.holdout.check_label_gates)


def check_thresholds(gates: Gates) -> None:
    """Raise UsageError for thresholds that make no sense (NaN, out of range, not a number)."""
    from rescompile.readers import short

    for s in SPECS:
        value = getattr(gates, s.field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise UsageError(f"{s.flag} must be a number, got {short(value)}")
        strict_lo = s.field in ("max_p99_ms", "min_speedup")
        if value < s.lo or value > s.hi or (strict_lo and value <= s.lo):
            bounds = f"> {s.lo:g}" if math.isinf(s.hi) else f"in [{s.lo:g}, {s.hi:g}]"
            raise UsageError(f"{s.flag} {value:g} is out of range: it must be {bounds}")
    if gates.latency_batch is not None and (
        isinstance(gates.latency_batch, bool) or not isinstance(gates.latency_batch, int) or gates.latency_batch < 1
    ):
        raise UsageError(f"the gates' latency batch must be a positive integer, got {short(gates.latency_batch)}")


def any_gate(gates: Gates) -> bool:
    return any(getattr(gates, s.field) is not None for s in SPECS)


def accuracy_gates(gates: Gates) -> Gates:
    """Only the gates that measure accuracy (what ``--auto-fallback`` tries to pass)."""
    return Gates(**{f: getattr(gates, f) for f in ACCURACY_GATES})


def load_gates(path: Path) -> Gates:
    """Read a YAML gates recipe: a mapping of gate names (``max-top1-drop`` or ``max_top1_drop``) to numbers.

    The mapping may sit at the top level or under a ``gates:`` key.

    Raises:
        UsageError: unreadable file, unknown key, or a value that is not a number.
    """
    from rescompile.readers import read_yaml, short

    path = Path(path)
    doc = read_yaml(path, "gates file")
    if isinstance(doc, dict) and isinstance(doc.get("gates"), dict):
        doc = doc["gates"]
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{path} holds no gates", hint="write e.g. 'max-top1-drop: 1.0' and 'min-agreement: 98'")
    known = {f.name for f in fields(Gates)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"{path}: unknown gate {short(key)}", hint="one of: " + ", ".join(k.replace("_", "-") for k in sorted(known)))
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{path}: gate {short(key)} must be a number, got {short(value)}")
        values[name] = value
    gates = Gates(**values)
    check_thresholds(gates)
    return gates


def merge_gates(recipe: Gates | None, flags: Gates) -> Gates:
    """``flags`` override ``recipe`` wherever a flag was given."""
    if recipe is None:
        return flags
    return replace(recipe, **{f.name: getattr(flags, f.name) for f in fields(Gates) if getattr(flags, f.name) is not None})


def resolve_gates(recipe: Path | None, flags: Gates) -> Gates:
    """Gates from an optional YAML recipe overridden by flags; UsageError (exit 2) for invalid thresholds."""
    gates = merge_gates(load_gates(recipe) if recipe is not None else None, flags)
    check_thresholds(gates)
    return gates


def gate_batch(report: dict[str, Any], gates: Gates) -> int | None:
    """The batch size the latency gates read: the configured one, else the smallest measured."""
    if gates.latency_batch is not None:
        return gates.latency_batch
    batches = [r["batch"] for r in report.get("latency", [])]
    return min(batches) if batches else None


def latency_role(record: dict[str, Any]) -> str:
    """``candidate`` or ``baseline`` (reports without roles: the FP32 runner is the baseline)."""
    return str(record.get("role") or ("baseline" if record["runner"].endswith("fp32") else "candidate"))


def _candidate_p99(report: dict[str, Any], batch: int | None) -> tuple[float | None, str]:
    rec = next((r for r in report.get("latency", []) if latency_role(r) == "candidate" and r["batch"] == batch), None)
    return (None, f"n/a (batch {batch} not measured)") if rec is None else (float(rec["p99_ms"]), "")


def _speedup(report: dict[str, Any], batch: int | None) -> tuple[float | None, str]:
    v = report.get("speedup_int8_vs_fp32_p50", {}).get(str(batch))
    return (None, f"n/a (no FP32 baseline measured at batch {batch})") if v is None else (float(v), "")


def evaluate_gates(report: dict[str, Any], gates: Gates) -> list[GateResult]:
    """Check ``report`` (as written by validation) against ``gates``; one result per enabled gate."""
    check_thresholds(gates)
    batch = gate_batch(report, gates)
    acc, agr = report["accuracy"], report["agreement"]
    readers: dict[str, Callable[[], tuple[str, float | None, str]]] = {
        "max_top1_drop": lambda: (
            "accuracy.top1_drop",
            acc.get("top1_drop"),
            "" if acc.get("top1_drop") is not None else "n/a (no labels)",
        ),
        "min_agreement": lambda: ("agreement.top1", agr["top1"], ""),
        "min_cosine": lambda: ("agreement.cosine_mean", agr["cosine_mean"], ""),
        "max_p99_ms": lambda: (f"latency.candidate.batch{batch}.p99_ms", *_candidate_p99(report, batch)),
        "min_speedup": lambda: (f"speedup.batch{batch}.p50", *_speedup(report, batch)),
    }
    out: list[GateResult] = []
    for s in SPECS:
        threshold = getattr(gates, s.field)
        if threshold is None:
            continue
        metric, value, missing = readers[s.field]()
        if value is None:
            ok, shown = False, missing
        else:
            ok = value <= threshold if s.comparison == "<=" else value >= threshold
            shown = f"{value:{s.fmt}}{s.unit}"
        msg = f"{metric} = {shown}, threshold {s.comparison} {threshold:g}{s.unit}"
        out.append(GateResult(s.flag[2:], metric, value, float(threshold), ok, msg, s.comparison))
    return out
