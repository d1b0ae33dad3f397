"""Compare two reports (an old build and a new one): what regressed, what improved, within tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rescompile.buildfolder import REPORT_JSON
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


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json; UsageError if it is missing, not JSON, or not a rescompile report.

    Every field the comparison reads is checked for its type here, so a hand-edited or
    truncated report is a clear error, never a crash halfway through the comparison.
    """
    from rescompile.readers import read_json_object, short

    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
        if not path.is_file():
            raise UsageError(f"{path.parent} is a folder without a report.json", hint="pass a build folder or a report.json")
    doc = read_json_object(path, "rescompile report")
    if not str(doc.get("schema", "")).startswith("rescompile.report/"):
        raise UsageError(f"{path} is not a rescompile report (no 'schema': 'rescompile.report/N')")
    if doc["schema"] != "rescompile.report/1":
        raise UsageError(f"{path}: report schema {short(doc['schema'])} is not supported", hint="upgrade rescompile")
    for key in ("accuracy", "agreement", "latency"):
        if key not in doc:
            raise UsageError(f"{path}: report has no {key!r} section")

    def bad(where: str, want: str) -> UsageError:
        return UsageError(f"{path}: {where} must be {want} (a damaged or hand-edited report?)")

    def number(v: Any, where: str, optional: bool = True) -> None:
        if (v is None and optional) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return
        raise bad(where, "a number")

    acc, agr = doc["accuracy"], doc["agreement"]
    if not isinstance(acc, dict) or not isinstance(acc.get("candidate"), dict) or "top1" not in acc["candidate"]:
        raise bad("accuracy", "an object with candidate.top1")
    number(acc["candidate"]["top1"], "accuracy.candidate.top1")
    number(acc.get("top1_drop"), "accuracy.top1_drop")
    if not isinstance(agr, dict) or "top1" not in agr or "cosine_mean" not in agr:
        raise bad("agreement", "an object with top1 and cosine_mean")
    for k in ("top1", "cosine_mean", "cosine_min", "max_abs_error"):
        number(agr.get(k), f"agreement.{k}", optional=k not in ("top1", "cosine_mean"))
    if not isinstance(doc["latency"], list):
        raise bad("latency", "a list")
    for i, r in enumerate(doc["latency"]):
        if not isinstance(r, dict) or isinstance(r.get("batch"), bool) or not isinstance(r.get("batch"), int):
            raise bad(f"latency[{i}]", "an object with an integer batch")
        if not isinstance(r.get("role") or r.get("runner"), str):
            raise bad(f"latency[{i}]", "an object with a role or runner")
        for k in ("p50_ms", "p99_ms"):
            number(r.get(k), f"latency[{i}].{k}")
    speedup = doc.get("speedup_int8_vs_fp32_p50", {})
    if not isinstance(speedup, dict) or not all(str(k).isdigit() and len(str(k)) < 10 for k in speedup):
        raise bad("speedup_int8_vs_fp32_p50", "an object keyed by batch size")
    for k, v in speedup.items():
        number(v, f"speedup_int8_vs_fp32_p50.{k}")
    gates = doc.get("gates", [])
    if not isinstance(gates, list):
        raise bad("gates", "a list")
    for i, g in enumerate(gates):
        if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not isinstance(g.get("passed"), bool):
            raise bad(f"gates[{i}]", "an object with a name and passed")
        number(g.get("value"), f"gates[{i}].value")
    if not isinstance(doc.get("model", {}), dict):
        raise bad("model", "an object")
    return doc


MODEL_KEYS = ("name", "input_shape", "num_classes")


def model_identity(report: dict[str, Any]) -> dict[str, Any]:
    """What identifies the model a report measured: input shape and class count, and the model's name for a build.

    A ``validate`` report's name is its candidate's file name (``model.int8``), not the model's,
    so it is left out there (such reports carry a ``reference``).
    """
    model = report.get("model") or {}
    keys = MODEL_KEYS[1:] if "reference" in model else MODEL_KEYS
    return {k: model[k] for k in keys if model.get(k) is not None}


def model_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
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


def compare_reports(old: dict[str, Any], new: dict[str, Any], tol: Tolerances | None = None) -> list[Change]:
    """Metric by metric changes from ``old`` to ``new``; gates that went from pass to fail regress."""
    tol = tol or Tolerances()
    tol.check()
    out = [
        _judge(
            "accuracy.candidate.top1", old["accuracy"]["candidate"]["top1"], new["accuracy"]["candidate"]["top1"], True, tol.accuracy_points
        ),
        _judge("accuracy.top1_drop", old["accuracy"].get("top1_drop"), new["accuracy"].get("top1_drop"), False, tol.accuracy_points),
        _judge("agreement.top1", old["agreement"]["top1"], new["agreement"]["top1"], True, tol.accuracy_points),
        _judge("agreement.cosine_mean", old["agreement"]["cosine_mean"], new["agreement"]["cosine_mean"], True, tol.cosine),
    ]
    for key in ("cosine_min", "max_abs_error"):
        out.append(Change(f"agreement.{key}", old["agreement"].get(key), new["agreement"].get(key), INFO))
    if tol.check_latency:

        def cand(rep: dict[str, Any]) -> dict[int, dict[str, Any]]:
            return {r["batch"]: r for r in rep.get("latency", []) if latency_role(r) == "candidate"}

        o, n = cand(old), cand(new)
        for batch in sorted(set(o) | set(n)):
            for key in ("p50_ms", "p99_ms"):
                out.append(
                    _judge(
                        f"latency.candidate.batch{batch}.{key}",
                        o.get(batch, {}).get(key),
                        n.get(batch, {}).get(key),
                        False,
                        tol.latency,
                        relative=True,
                    )
                )
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
        return (
            f"the reports use different validation sets ({old.get('source')} x{old.get('samples')} vs "
            f"{new.get('source')} x{new.get('samples')}): accuracy changes may not be comparable"
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
