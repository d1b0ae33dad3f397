"""Compare two reports (an old build and a new one): what regressed, what improved, within tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rescompile.buildfolder import REPORT_JSON
from rescompile.errors import UsageError
from rescompile.validate.results import Report

REGRESSED, IMPROVED, SAME, INFO = "regressed", "improved", "same", "info"


@dataclass(frozen=True)
class Tolerances:
    """How much worse a metric may get before it counts as a regression."""

    accuracy_points: float = 0.0  # top-1, top-1 drop, agreement (percentage points)
    cosine: float = 1e-4  # mean logit cosine
    latency: float = 0.10  # relative increase of p50 / p99 and relative loss of speedup
    check_latency: bool = True

    def check(self) -> None:
        for name, v in (
            ("accuracy tolerance", self.accuracy_points),
            ("cosine tolerance", self.cosine),
            ("latency tolerance", self.latency),
        ):
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


def load_report(path: Path) -> Report:
    """Read a report.json (or the one in a build folder) as a typed :class:`~rescompile.validate.results.Report`.

    Every field is checked for its type (:meth:`Report.from_dict`), so a hand-edited or truncated
    report is a clear UsageError naming the field, never a crash halfway through the comparison.
    """
    from rescompile.readers import read_json_object

    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
        if not path.is_file():
            raise UsageError(f"{path.parent} is a folder without a report.json", hint="pass a build folder or a report.json")
    return Report.from_dict(read_json_object(path, "rescompile report"), str(path))


MODEL_KEYS = ("name", "input_shape", "num_classes")


def model_identity(report: Report) -> dict[str, Any]:
    """What identifies the model a report measured: input shape and class count, and the model's name for a build.

    A ``validate`` report's name is its candidate's file name (``model.int8``), not the model's,
    so it is left out there (such reports carry a ``reference``).
    """
    model = report.model.to_dict()
    keys = MODEL_KEYS[1:] if report.model.reference is not None else MODEL_KEYS
    return {k: model[k] for k in keys if model.get(k) is not None}


def model_difference(old: Report, new: Report) -> str | None:
    """How the two reports' models differ (``name resnet20 vs resnet32``), or None when they are the same model."""
    a, b = model_identity(old), model_identity(new)
    diffs = [f"{k} {a[k]} vs {b[k]}" for k in MODEL_KEYS if k in a and k in b and a[k] != b[k]]
    return "; ".join(diffs) or None


def _judge(metric: str, old: float | None, new: float | None, higher_is_better: bool, tol: float, relative: bool = False) -> Change:
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


def compare_reports(old: Report, new: Report, tol: Tolerances | None = None) -> list[Change]:
    """Metric by metric changes from ``old`` to ``new``; gates that went from pass to fail regress."""
    tol = tol or Tolerances()
    tol.check()
    a, b = old.measurement, new.measurement
    out = [
        _judge("accuracy.candidate.top1", a.accuracy.candidate.top1, b.accuracy.candidate.top1, True, tol.accuracy_points),
        _judge("accuracy.top1_drop", a.accuracy.top1_drop, b.accuracy.top1_drop, False, tol.accuracy_points),
        _judge("agreement.top1", a.agreement.top1, b.agreement.top1, True, tol.accuracy_points),
        _judge("agreement.cosine_mean", a.agreement.cosine_mean, b.agreement.cosine_mean, True, tol.cosine),
        Change("agreement.cosine_min", a.agreement.cosine_min, b.agreement.cosine_min, INFO),
        Change("agreement.max_abs_error", a.agreement.max_abs_error, b.agreement.max_abs_error, INFO),
    ]
    if tol.check_latency:
        o = {r.batch: r for r in a.latency if r.role == "candidate"}
        n = {r.batch: r for r in b.latency if r.role == "candidate"}
        for batch in sorted(set(o) | set(n)):
            for key in ("p50_ms", "p99_ms"):
                was, now = (getattr(x[batch], key) if batch in x else None for x in (o, n))
                out.append(_judge(f"latency.candidate.batch{batch}.{key}", was, now, False, tol.latency, relative=True))
        so, sn = a.speedup, b.speedup
        for key in sorted(set(so) | set(sn), key=int):
            out.append(_judge(f"speedup.batch{key}.p50", so.get(key), sn.get(key), True, tol.latency, relative=True))
    old_gates = {g.name: g for g in old.gates}
    for g in new.gates:
        before = old_gates.get(g.name)
        was_passed = None if before is None else before.passed
        if not g.passed and was_passed is not False:
            status, note = REGRESSED, ("newly failing" if was_passed else "failing (not gated before)")
        elif g.passed and was_passed is False:
            status, note = IMPROVED, "now passing"
        else:
            status, note = (SAME, "still passing") if g.passed else (INFO, "still failing")
        out.append(Change(f"gate.{g.name}", None if before is None else before.value, g.value, status, note))
    return out


def dataset_warning(old: Report, new: Report) -> str | None:
    """A warning when the two reports were measured on different validation sets."""
    a, b = old.measurement, new.measurement
    if (a.source, a.samples) != (b.source, b.samples):
        return (
            f"the reports use different validation sets ({a.source} x{a.samples} vs "
            f"{b.source} x{b.samples}): accuracy changes may not be comparable"
        )
    return None


def render_comparison_markdown(changes: list[Change], old_name: str, new_name: str, note: str | None = None) -> str:
    regressed = [c for c in changes if c.status == REGRESSED]
    head = f"# rescompile compare: {len(regressed)} regression(s)" if regressed else "# rescompile compare: no regression"
    lines = [
        head,
        "",
        f"`{old_name}` -> `{new_name}`",
        *(["", f"**Warning:** {note}"] if note else []),
        "",
        "| metric | old | new | delta | status |",
        "|---|---|---|---|---|",
    ]

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.5g}"

    for c in changes:
        status = f"**{c.status}**" if c.status == REGRESSED else c.status
        note = f" ({c.note})" if c.note and c.status != SAME else ""
        lines.append(f"| `{c.metric}` | {num(c.old)} | {num(c.new)} | {'' if c.delta is None else f'{c.delta:+.4g}'} | {status}{note} |")
    return "\n".join(lines) + "\n"
