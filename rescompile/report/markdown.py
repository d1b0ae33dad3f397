"""Human-readable reports: Markdown for CI job summaries (``cat report.md >> $GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rescompile.validate.metrics import drop_text, interval_rows
from rescompile.validate.results import section_dict

if TYPE_CHECKING:
    from rescompile.validate.gates import GateResult
    from rescompile.validate.layerwise import Layerwise
    from rescompile.validate.results import FallbackRecord, FallbackState, FallbackStep, Report
    from rescompile.validate.run import Measurement

WORST_CLASSES = 5
WORST_LAYERS = 5


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "n/a" if v is None else f"{v:{fmt}}"


def class_label(measurement: Measurement, label: int) -> str:
    names = measurement.class_names
    return f"{label} ({names[label]})" if 0 <= label < len(names) else str(label)


def validation_lines(report: Report) -> list[str]:
    """How the validation set was chosen (``report.validation``); in-sample results are flagged."""
    choice = section_dict(report.validation)
    if not choice.get("description"):
        return []
    text = choice["description"]
    return ["", f"> **Validation: {text}**" if choice.get("in_sample") else f"Validation: {text}"]


def gate_result_text(g: GateResult) -> str:
    """pass, **FAIL** or abstains (a floor with nothing to judge)."""
    return "abstains" if g.abstained else "pass" if g.passed else "**FAIL**"


def gate_rows(gates: list[GateResult]) -> list[str]:
    """The gates as a Markdown table (``report.md`` and ``deploy.md``): value, 95% interval, where it lies, mode."""
    lines = ["| gate | metric | value | 95% interval | threshold | mode | result |", "|---|---|---|---|---|---|---|"]
    for g in gates:
        where = f"{g.side}" + (f" ({g.settle_text().split(': ', 1)[1]})" if g.side == "straddles" else "") if g.side else ""
        interval = f"{g.interval_text('.6g')} {where}".strip() or "—"
        lines.append(
            f"| {g.name} | `{g.metric}` | {_num(g.value, '.6g')} | {interval} | {g.comparison} {g.threshold:g} | "
            f"{g.mode or '—'} | {gate_result_text(g)} |"
        )
    return lines


def render_markdown(report: Report) -> str:
    m = report.measurement
    acc, agr = m.accuracy, m.agreement
    status = "PASSED" if report.all_passed else "FAILED"
    lines = [
        f"# rescompile: {report.model.name} {m.candidate} ({status})",
        "",
        f"Validation set: {m.samples} samples from `{m.source}`; reference `{m.reference}`, candidate `{m.candidate}`.",
        *validation_lines(report),
        "",
        "| metric | reference | candidate |",
        "|---|---|---|",
        f"| top-1 | {_pct(acc.reference.top1)} | {_pct(acc.candidate.top1)} |",
        f"| top-5 | {_pct(acc.reference.top5)} | {_pct(acc.candidate.top5)} |",
        "",
        f"Top-1 agreement {agr.top1:.2f}%, logit cosine mean {agr.cosine_mean:.5f} "
        f"(worst {agr.cosine_min:.5f}), max abs error {agr.max_abs_error:.4g}, "
        f"mean abs error {agr.mean_abs_error:.4g}.",
    ]
    rows = interval_rows(acc, agr)
    if rows:
        lines += ["", "| metric (95% interval) | value |", "|---|---|", *(f"| {k.replace(' (95% CI)', '')} | {v} |" for k, v in rows)]
    if report.gates:
        lines += ["", "## Gates", "", *gate_rows(report.gates)]
    if m.per_class:
        lines += [
            "",
            f"## Worst classes (of {len(m.per_class)})",
            "",
            "| class | samples | reference top-1 | candidate top-1 | delta | drop [Bonferroni interval] | p (Holm) |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in m.per_class[:WORST_CLASSES]:
            lines.append(
                f"| {class_label(m, d.label)} | {d.samples} | {_pct(d.reference_top1)} | {_pct(d.candidate_top1)} | {d.delta:+.2f} | "
                f"{drop_text(d.drop)} | {_num(d.p_holm, '.3g')} |"
            )
    if m.latency:
        lines += [
            "",
            "## Latency",
            "",
            "| runner | batch | runs | p50 ms | p90 ms | p99 ms | samples/s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lat in m.latency:
            lines.append(
                f"| {lat.runner} | {lat.batch} | {lat.runs} | {lat.p50_ms:.2f} | {lat.p90_ms:.2f} | {lat.p99_ms:.2f} | "
                f"{lat.throughput:.0f} | {_num(lat.peak_rss_mib, '.0f')} |"
            )
        if m.speedup:
            lines += ["", "Speedup over FP32 (p50): " + ", ".join(f"batch {b}: {v:.2f}x" for b, v in m.speedup.items()) + "."]
        plan = m.latency_plan
        if plan is not None:
            modes = {"auto": f"within a budget of {plan.budget_s} s", "runs": "a fixed number of runs", "budget": "a budget per batch size"}
            brief = ", briefly (not representative here)" if plan.brief else ""
            lines += ["", f"Timed {modes[plan.mode]}{brief}: {plan.spent_s:.1f} s spent."]
            lines += [f"Batch {x.batch} not timed: {x.reason}." for x in plan.skipped]
    for note in report.notes:
        lines += ["", f"> **Note:** {note}"]
    for w in report.warnings or []:
        warning = w.to_dict()
        lines += ["", f"> **Warning ({warning['code']}):** {warning['message']}"]
    if report.layerwise is not None:
        lines += _layerwise_md(report.layerwise)
    if report.fallback is not None:
        lines += _fallback_md(report.fallback)
    return "\n".join(lines) + "\n"


def _layerwise_md(lw: Layerwise) -> list[str]:
    lines = [
        "",
        f"## Layerwise blame ({lw.samples} samples)",
        "",
        "Error each quantized layer adds (relative error of its output minus that of its inputs):",
        "",
        "| layer | op | input rel. error | output rel. error | jump | output cosine |",
        "|---|---|---|---|---|---|",
    ]
    for name in lw.ranking[:WORST_LAYERS]:
        lay = lw.layer(name)
        lines.append(
            f"| `{name}` | {lay.op} | {lay.input_rel_error:.4f} | {lay.output_rel_error:.4f} | {lay.jump:+.4f} | {lay.cosine:.5f} |"
        )
    if lw.suggested_keep_fp:
        lines += ["", "To recover accuracy, try: " + " ".join(f"`--keep-fp '{p}'`" for p in lw.suggested_keep_fp)]
    return lines


AXIS_NAMES = {
    "accuracy.top1_drop": "top-1 drop, points",
    "agreement.top1": "disagreement with FP32, %",
    "agreement.cosine_mean": "1 - cosine",
}


def fallback_rows(fb: FallbackRecord) -> list[dict[str, Any]]:
    """The Pareto table of an auto-fallback (report.json's ``fallback``): the start and every step tried, as display cells."""
    rows = []
    points: list[tuple[FallbackStep | None, FallbackState]] = [(None, fb.initial)] + [(s, s.after) for s in fb.steps]
    for i, (s, a) in enumerate(points):
        rows.append(
            {
                "step": str(i),
                "unit": "(start)" if s is None else s.unit.label(),
                "result": "start" if s is None else ("kept" if s.accepted else "stepped back"),
                "fusion": "" if s is None else s.fusion,
                "top1_drop": _num(a.top1_drop, ".2f"),
                "agreement": f"{a.agreement:.2f}%",
                "cosine": f"{a.cosine_mean:.5f}",
                "fp_macs": f"{a.fp_macs_share * 100:.1f}%",
                "p50_ms": f"{a.p50_ms:.3f}",
                "pareto": fb.initial.pareto if s is None else s.pareto,
                "gates": "pass" if a.gates_passed else "fail",
            }
        )
    return rows


def fallback_summary(fb: FallbackRecord) -> str:
    """One sentence: what the search ranked on, on how many samples, and where it was judged."""
    sp, rk = fb.split, fb.ranking
    return (
        f"{fb.unit} units, at most {fb.limit}; {rk.candidates} candidates ranked on `{rk.runner}` by logit NMSE "
        f"over the {rk.samples} samples (of the {sp.ranking_samples}-sample ranking split) where INT8 and FP32 differ most "
        f"({rk.runs} ranking runs); every step judged on the {sp.gate_samples}-sample gate split "
        f"({fb.gate_runs} runs; split seed {sp.seed}{', stratified by label' if sp.stratified else ''}); "
        f"{fb.seconds:.1f} s."
    )


def _fallback_md(fb: FallbackRecord) -> list[str]:
    lines = [
        "",
        f"## Auto-fallback ({'gates pass' if fb.passed else 'gates still fail'}: {fb.stopped})",
        "",
        fallback_summary(fb),
        "",
        f"Pareto front (*: no other point has a {AXIS_NAMES.get(fb.pareto_axis, fb.pareto_axis)} as low with no more MACs "
        "in FP, and is better on one of the two):",
        "",
        "| step | unit | result | top-1 drop | agreement | cosine mean | FP MACs | p50 ms | Pareto | fusion given up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in fallback_rows(fb):
        lines.append(
            f"| {r['step']} | `{r['unit']}` | {r['result']} | {r['top1_drop']} | {r['agreement']} | {r['cosine']} | "
            f"{r['fp_macs']} | {r['p50_ms']} | {'*' if r['pareto'] else ''} | {r['fusion']} |"
        )
    return lines
