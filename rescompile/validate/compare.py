"""Compare two reports (an old build and a new one): what regressed, what improved, within tolerances."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rescompile.errors import UsageError
from rescompile.validate.gates import latency_role

REGRESSED, IMPROVED, SAME, INFO = "regressed", "improved", "same", "info"


@dataclass(frozen=True)
class Tolerances:
    """How much worse a metric may get before it counts as a regression."""

    accuracy_points: float = 0.0  # top-1, top-1 drop, agreement (percentage points)
    cosine: float = 1e-4  # mean logit cosine
    latency: float = 0.10  # relative increase of p50 / p99 and relative loss of speedup
    check_latency: bool = True

    def check(self) -> None:
        for name, v in (("accuracy tolerance", self.accuracy_points), ("cosine tolerance", self.cosine),
                        ("latency tolerance", self.latency)):  # fmt: skip
            if not v >= 0:
                raise UsageError(f"the {name} must be >= 0, got {v}")


@dataclass
class Change:
    metric: str
    old: float | None
    new: float | None
    status: str  # regressed | improved | same | info
    note: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.old is None or self.new is None else self.new - self.old

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json; UsageError if it is missing, not JSON, or not a rescompile report."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise UsageError(f"report not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("rescompile.report/"):
        raise UsageError(f"{path} is not a rescompile report (no 'schema': 'rescompile.report/N')")
    if doc["schema"] != "rescompile.report/1":
        raise UsageError(f"{path}: report schema {doc['schema']!r} is not supported", hint="upgrade rescompile")
    for key in ("accuracy", "agreement", "latency"):
        if key not in doc:
            raise UsageError(f"{path}: report has no {key!r} section")
    return doc


def _judge(metric: str, old: float | None, new: float | None, higher_is_better: bool, tol: float,
           relative: bool = False) -> Change:  # fmt: skip
    if old is None or new is None:
        return Change(metric, old, new, INFO, "missing in one report")
    delta = new - old
    allowed = tol * abs(old) if relative else tol
    worse = -delta if higher_is_better else delta
    if worse > allowed:
        return Change(metric, old, new, REGRESSED, f"worse by more than {tol:g}{' (relative)' if relative else ''}")
    if worse < -allowed:
        return Change(metric, old, new, IMPROVED)
    return Change(metric, old, new, SAME)


def compare_reports(old: dict[str, Any], new: dict[str, Any], tol: Tolerances | None = None) -> list[Change]:
    """Metric by metric changes from ``old`` to ``new``; gates that went from pass to fail regress."""
    tol = tol or Tolerances()
    tol.check()
    out = [
        _judge("accuracy.candidate.top1", old["accuracy"]["candidate"]["top1"], new["accuracy"]["candidate"]["top1"],
               True, tol.accuracy_points),
        _judge("accuracy.top1_drop", old["accuracy"].get("top1_drop"), new["accuracy"].get("top1_drop"), False,
               tol.accuracy_points),
        _judge("agreement.top1", old["agreement"]["top1"], new["agreement"]["top1"], True, tol.accuracy_points),
        _judge("agreement.cosine_mean", old["agreement"]["cosine_mean"], new["agreement"]["cosine_mean"], True, tol.cosine),
    ]  # fmt: skip
    for key in ("cosine_min", "max_abs_error"):
        out.append(Change(f"agreement.{key}", old["agreement"].get(key), new["agreement"].get(key), INFO))
    if tol.check_latency:
        def cand(rep: dict[str, Any]) -> dict[int, dict[str, Any]]:
            return {r["batch"]: r for r in rep.get("latency", []) if latency_role(r) == "candidate"}

        o, n = cand(old), cand(new)
        for batch in sorted(set(o) | set(n)):
            for key in ("p50_ms", "p99_ms"):
                out.append(_judge(f"latency.candidate.batch{batch}.{key}", o.get(batch, {}).get(key),
                                  n.get(batch, {}).get(key), False, tol.latency, relative=True))  # fmt: skip
        so, sn = old.get("speedup_int8_vs_fp32_p50", {}), new.get("speedup_int8_vs_fp32_p50", {})
        for batch in sorted(set(so) | set(sn), key=int):
            out.append(_judge(f"speedup.batch{batch}.p50", so.get(batch), sn.get(batch), True, tol.latency, relative=True))
    old_gates = {g["name"]: g for g in old.get("gates", [])}
    for g in new.get("gates", []):
        before = old_gates.get(g["name"])
        was = None if before is None else before["passed"]
        if not g["passed"] and was is not False:
            status, note = REGRESSED, ("newly failing" if was else "failing (not gated before)")
        elif g["passed"] and was is False:
            status, note = IMPROVED, "now passing"
        else:
            status, note = (SAME, "still passing") if g["passed"] else (INFO, "still failing")
        out.append(Change(f"gate.{g['name']}", None if before is None else before["value"], g["value"], status, note))
    return out


def dataset_warning(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """A warning when the two reports were measured on different validation sets."""
    if (old.get("source"), old.get("samples")) != (new.get("source"), new.get("samples")):
        return (f"the reports use different validation sets ({old.get('source')} x{old.get('samples')} vs "
                f"{new.get('source')} x{new.get('samples')}): accuracy changes may not be comparable")  # fmt: skip
    return None


def render_comparison_markdown(changes: list[Change], old_name: str, new_name: str) -> str:
    regressed = [c for c in changes if c.status == REGRESSED]
    head = f"# rescompile compare: {len(regressed)} regression(s)" if regressed else "# rescompile compare: no regression"
    lines = [head, "", f"`{old_name}` -> `{new_name}`", "", "| metric | old | new | delta | status |", "|---|---|---|---|---|"]

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.5g}"

    for c in changes:
        status = f"**{c.status}**" if c.status == REGRESSED else c.status
        note = f" ({c.note})" if c.note and c.status != SAME else ""
        lines.append(f"| `{c.metric}` | {num(c.old)} | {num(c.new)} | "
                     f"{'' if c.delta is None else f'{c.delta:+.4g}'} | {status}{note} |")  # fmt: skip
    return "\n".join(lines) + "\n"
