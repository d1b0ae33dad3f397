"""``rescompile compare OLD.json NEW.json``: what regressed between two builds; exit 1 on a regression."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.commands import options as o
from rescompile.commands.base import app, console, warn


@app.command(
    epilog="Examples:\n\n  rescompile compare main/report.json build/demo/report.json\n\n"
    "  rescompile compare old/ new/ --latency-tolerance 0.25 --md compare.md",
)
def compare(
    old: Annotated[Path, typer.Argument(help="The earlier report.json (or its build folder).")],
    new: Annotated[Path, typer.Argument(help="The new report.json (or its build folder).")],
    accuracy_tolerance: Annotated[float, typer.Option(help="Points of top-1 / agreement the new build may lose.")] = 0.0,
    cosine_tolerance: Annotated[float, typer.Option(help="Mean logit cosine the new build may lose.")] = 1e-4,
    latency_tolerance: Annotated[float, typer.Option(help="Relative latency increase (0.1 = 10%) allowed.")] = 0.10,
    ignore_latency: Annotated[bool, typer.Option("--ignore-latency", help="Compare accuracy and gates only.")] = False,
    md: Annotated[Path | None, typer.Option("--md", help="Also write the comparison as Markdown here.")] = None,
    no_verify_hashes: o.NoVerifyOpt = False,
    allow_different_models: Annotated[
        bool, typer.Option("--allow-different-models", help="Compare reports of different models (name, input shape or classes) anyway.")
    ] = False,
) -> None:
    """Compare two reports metric by metric; exit 1 when anything regressed beyond its tolerance.

    A report in a build folder is checked against its manifest.json first (exit 2 if it changed);
    builds whose gates failed compare like any other (that is what a CI job compares after a failure).

    A regression: lower INT8 top-1 or agreement, a bigger top-1 drop, lower cosine, slower p50/p99,
    a smaller speedup, or a gate that passed before and fails now. Reports of two different models
    (name, input shape or class count) are refused (exit 2) unless --allow-different-models.
    """
    from rescompile.errors import GateFailed, UsageError
    from rescompile.io import write_text_atomic
    from rescompile.report.compare import (
        REGRESSED,
        Tolerances,
        compare_reports,
        dataset_warning,
        load_report,
        model_difference,
        render_comparison_markdown,
    )

    a, b = load_report(_report_path(old, no_verify_hashes)), load_report(_report_path(new, no_verify_hashes))
    differ = model_difference(a, b)
    if differ and not allow_different_models:
        raise UsageError(
            f"{old} and {new} are reports of different models ({differ}): their metrics are not comparable",
            hint="compare two builds of the same model, or pass --allow-different-models",
        )
    changes = compare_reports(a, b, Tolerances(accuracy_tolerance, cosine_tolerance, latency_tolerance, not ignore_latency))
    warning = dataset_warning(a, b)
    console.print(_table(changes, f"rescompile compare: {old} -> {new}"))
    if differ:
        console.print(f"[yellow]warning:[/] different models ({differ}): changes are not regressions of one model", highlight=False)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if md is not None:
        write_text_atomic(md, render_comparison_markdown(changes, str(old), str(new), note=differ and f"different models: {differ}"))
    regressed = [c for c in changes if c.status == REGRESSED]
    if regressed:
        lines = [f"{c.metric}: {c.old} -> {c.new} ({c.note})" for c in regressed]
        raise GateFailed(f"{len(regressed)} regression(s):\n  " + "\n  ".join(lines))
    console.print("no regression", highlight=False)


def _report_path(path: Path, no_verify_hashes: bool) -> Path:
    """A report.json of a build folder (or the folder) is checked against its manifest; failed builds compare fine."""
    from rescompile.buildfolder import MANIFEST, REPORT_JSON, build_of, open_build

    if path.is_dir():  # a build folder; a folder without a manifest (`validate --out`) holds a plain report.json
        build = open_build(path, verify=not no_verify_hashes, allow_failed=True) if (path / MANIFEST).is_file() else None
    else:
        build = build_of(path, verify=not no_verify_hashes, allow_failed=True)
    if build is None:
        return path
    for line in build.warnings(failed=False):
        warn(line)
    return build.file(REPORT_JSON if path.is_dir() else path.name)


def _table(changes: list[Any], title: str) -> Any:
    """The comparison as a rich table: one row per metric, regressions in red."""
    from rich.table import Table

    from rescompile.report.compare import REGRESSED, SAME

    t = Table(title=title)
    for col, just in (("metric", "left"), ("old", "right"), ("new", "right"), ("delta", "right"), ("status", "left")):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    colors = {REGRESSED: "red", "improved": "green", SAME: "dim"}
    for c in changes:
        style = colors.get(c.status, "")
        status = c.status + (f" ({c.note})" if c.note and c.status != SAME else "")
        t.add_row(
            c.metric,
            "n/a" if c.old is None else f"{c.old:.5g}",
            "n/a" if c.new is None else f"{c.new:.5g}",
            "" if c.delta is None else f"{c.delta:+.4g}",
            f"[{style}]{status}[/]" if style else status,
        )
    return t
