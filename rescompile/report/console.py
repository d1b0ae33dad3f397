"""Terminal summary of a report: a rich table of metrics and latency, then one line per gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rescompile.validate.metrics import interval_rows
from rescompile.validate.results import section_dict

if TYPE_CHECKING:
    from rescompile.validate.latency import Latency
    from rescompile.validate.results import Report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def summary_table(report: Report, title: str) -> Table:
    m = report.measurement
    acc, agr = m.accuracy, m.agreement
    t = Table(title=title)
    t.add_column("metric")
    t.add_column(f"reference ({m.reference})", justify="right")
    t.add_column(f"candidate ({m.candidate})", justify="right")
    t.add_row("top-1", _pct(acc.reference.top1), _pct(acc.candidate.top1))
    t.add_row("top-1 agreement", "", _pct(agr.top1))
    t.add_row("logit cosine (mean / worst)", "", f"{agr.cosine_mean:.5f} / {agr.cosine_min:.5f}")
    t.add_row("max abs error", "", f"{agr.max_abs_error:.4g}")
    for label, text in interval_rows(acc, agr):
        t.add_row(label, "", text)
    lat = m.latency
    for batch in sorted({x.batch for x in lat}):
        base = next((x for x in lat if x.batch == batch and x.role == "baseline"), None)
        cand = next((x for x in lat if x.batch == batch and x.role == "candidate"), None)

        def cell(x: Latency | None) -> str:
            return "" if x is None else f"{x.p50_ms:.2f} / {x.p99_ms:.2f} ms"

        label = f"latency p50 / p99, batch {batch}" + (f" (baseline {base.runner})" if base else "")
        t.add_row(label, cell(base), cell(cand))
    return t


def print_summary(console: Console, report: Report, title: str) -> None:
    """The table, then ``PASS``/``FAIL`` lines for every gate (metric, value, threshold)."""
    console.print(summary_table(report, title))
    choice = section_dict(report.validation)
    if choice.get("description"):
        style = "yellow" if choice.get("in_sample") else "dim"
        console.print(f"[{style}]validation: {escape(choice['description'])}[/]", highlight=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for w in (w.to_dict() for w in report.warnings or []):
        console.print(f"[bold yellow]warning ({escape(w['code'])}):[/] {escape(w['message'])}", highlight=False)
    for g in report.gates:
        tag = "[dim]----[/]" if g.abstained else "[green]PASS[/]" if g.passed else "[red]FAIL[/]"
        console.print(f"{tag} {g.name}: {escape(g.message)}", highlight=False)
    lw = report.layerwise
    if lw is not None and lw.ranking:
        console.print(f"layerwise: most error added by {lw.ranking[0]}", highlight=False)
        if lw.suggested_keep_fp:
            console.print("  suggestion: " + " ".join(f"--keep-fp '{p}'" for p in lw.suggested_keep_fp), highlight=False)
    fb = report.fallback
    if fb is not None:
        kept = ", ".join(s.unit.label() for s in fb.accepted) or "none"
        backs = sum(1 for s in fb.steps if not s.accepted)
        console.print(
            f"auto-fallback: kept in FP: {kept} ({fb.stopped}; {backs} step(s) undone; judged on "
            f"{fb.split.gate_samples} gate-split samples)",
            highlight=False,
        )
