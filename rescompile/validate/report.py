"""Human-readable reports: Markdown for CI job summaries (``cat report.md >> $GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

from typing import Any

WORST_CLASSES = 5
WORST_LAYERS = 5


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "n/a" if v is None else f"{v:{fmt}}"


def class_label(report: dict[str, Any], label: int) -> str:
    names = report.get("class_names") or []
    return f"{label} ({names[label]})" if 0 <= label < len(names) else str(label)


def validation_lines(report: dict[str, Any]) -> list[str]:
    """How the validation set was chosen (``report["validation"]``); in-sample results are flagged."""
    choice = report.get("validation")
    if not choice or not choice.get("description"):
        return []
    text = choice["description"]
    return ["", f"> **Validation: {text}**" if choice.get("in_sample") else f"Validation: {text}"]


def render_markdown(report: dict[str, Any]) -> str:
    acc, agr = report["accuracy"], report["agreement"]
    model = report.get("model", {}).get("name", "model")
    status = "PASSED" if report.get("passed", True) else "FAILED"
    lines = [
        f"# rescompile: {model} {report.get('candidate', 'INT8')} ({status})",
        "",
        f"Validation set: {report['samples']} samples from `{report['source']}`; reference "
        f"`{report.get('reference', 'FP32')}`, candidate `{report.get('candidate', 'INT8')}`.",
        *validation_lines(report),
        "",
        "| metric | reference | candidate |",
        "|---|---|---|",
        f"| top-1 | {_pct(acc['reference']['top1'])} | {_pct(acc['candidate']['top1'])} |",
        f"| top-5 | {_pct(acc['reference']['top5'])} | {_pct(acc['candidate']['top5'])} |",
        "",
        f"Top-1 agreement {agr['top1']:.2f}%, logit cosine mean {agr['cosine_mean']:.5f} "
        f"(worst {agr['cosine_min']:.5f}), max abs error {agr['max_abs_error']:.4g}, "
        f"mean abs error {agr.get('mean_abs_error', 0.0):.4g}.",
    ]
    if report.get("gates"):
        lines += ["", "## Gates", "", "| gate | metric | value | threshold | result |", "|---|---|---|---|---|"]
        for g in report["gates"]:
            lines.append(
                f"| {g['name']} | `{g['metric']}` | {_num(g['value'], '.6g')} | {g.get('comparison', '')} "
                f"{g['threshold']:g} | {'pass' if g['passed'] else '**FAIL**'} |"
            )
    per_class = report.get("per_class") or []
    if per_class:
        lines += [
            "",
            f"## Worst classes (of {len(per_class)})",
            "",
            "| class | samples | reference top-1 | candidate top-1 | delta |",
            "|---|---|---|---|---|",
        ]
        for d in per_class[:WORST_CLASSES]:
            lines.append(
                f"| {class_label(report, d['label'])} | {d['samples']} | {_pct(d['reference_top1'])} | "
                f"{_pct(d['candidate_top1'])} | {d['delta']:+.2f} |"
            )
    if report.get("latency"):
        lines += [
            "",
            "## Latency",
            "",
            "| runner | batch | runs | p50 ms | p90 ms | p99 ms | samples/s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lat in report["latency"]:
            lines.append(
                f"| {lat['runner']} | {lat['batch']} | {lat.get('runs', '')} | {lat['p50_ms']:.2f} | "
                f"{lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['throughput']:.0f} | "
                f"{_num(lat.get('peak_rss_mib'), '.0f')} |"
            )
        speed = report.get("speedup_int8_vs_fp32_p50") or {}
        if speed:
            lines += ["", "Speedup over FP32 (p50): " + ", ".join(f"batch {b}: {v:.2f}x" for b, v in speed.items()) + "."]
        plan = report.get("latency_plan")
        if plan:
            modes = {
                "auto": f"within a budget of {plan['budget_s']} s",
                "runs": "a fixed number of runs",
                "budget": "a budget per batch size",
            }
            brief = ", briefly (not representative here)" if plan["brief"] else ""
            lines += ["", f"Timed {modes[plan['mode']]}{brief}: {plan['spent_s']:.1f} s spent."]
            lines += [f"Batch {x['batch']} not timed: {x['reason']}." for x in plan["skipped"]]
    for note in report.get("notes") or []:
        lines += ["", f"> **Note:** {note}"]
    for w in report.get("warnings") or []:
        lines += ["", f"> **Warning ({w['code']}):** {w['message']}"]
    lw = report.get("layerwise")
    if lw:
        lines += _layerwise_md(lw)
    fb = report.get("fallback")
    if fb:
        lines += _fallback_md(fb)
    return "\n".join(lines) + "\n"


def _layerwise_md(lw: dict[str, Any]) -> list[str]:
    layers = {lay["node"]: lay for lay in lw["layers"]}
    lines = [
        "",
        f"## Layerwise blame ({lw['samples']} samples)",
        "",
        "Error each quantized layer adds (relative error of its output minus that of its inputs):",
        "",
        "| layer | op | input rel. error | output rel. error | jump | output cosine |",
        "|---|---|---|---|---|---|",
    ]
    for name in lw["ranking"][:WORST_LAYERS]:
        lay = layers[name]
        lines.append(
            f"| `{name}` | {lay['op']} | {lay['input_rel_error']:.4f} | {lay['output_rel_error']:.4f} | "
            f"{lay['jump']:+.4f} | {lay['cosine']:.5f} |"
        )
    if lw["suggested_keep_fp"]:
        lines += ["", "To recover accuracy, try: " + " ".join(f"`--keep-fp '{p}'`" for p in lw["suggested_keep_fp"])]
    return lines


AXIS_NAMES = {
    "accuracy.top1_drop": "top-1 drop, points",
    "agreement.top1": "disagreement with FP32, %",
    "agreement.cosine_mean": "1 - cosine",
}


def fallback_rows(fb: dict[str, Any]) -> list[dict[str, Any]]:
    """The Pareto table of an auto-fallback (report.json's ``fallback``): the start and every step tried, as display cells."""
    rows = []
    points = [(None, fb["initial"])] + [(s, s["after"]) for s in fb["steps"]]
    for i, (s, a) in enumerate(points):
        rows.append(
            {
                "step": str(i),
                "unit": "(start)" if s is None else f"{s['unit']['kind']} {s['unit']['name']}",
                "result": "start" if s is None else ("kept" if s["accepted"] else "stepped back"),
                "fusion": "" if s is None else s["fusion"],
                "top1_drop": _num(a["top1_drop"], ".2f"),
                "agreement": f"{a['agreement']:.2f}%",
                "cosine": f"{a['cosine_mean']:.5f}",
                "fp_macs": f"{a['fp_macs_share'] * 100:.1f}%",
                "p50_ms": f"{a['p50_ms']:.3f}",
                "pareto": bool(fb["initial"].get("pareto") if s is None else s.get("pareto")),
                "gates": "pass" if a["gates_passed"] else "fail",
            }
        )
    return rows


def fallback_summary(fb: dict[str, Any]) -> str:
    """One sentence: what the search ranked on, on how many samples, and where it was judged."""
    sp, rk = fb["split"], fb["ranking"]
    return (
        f"{fb['unit']} units, at most {fb['limit']}; {rk['candidates']} candidates ranked on `{rk['runner']}` by logit NMSE "
        f"over the {rk['samples']} samples (of the {sp['ranking_samples']}-sample ranking split) where INT8 and FP32 differ most "
        f"({rk['runs']} ranking runs); every step judged on the {sp['gate_samples']}-sample gate split "
        f"({fb['gate_runs']} runs; split seed {sp['seed']}{', stratified by label' if sp['stratified'] else ''}); "
        f"{fb['seconds']:.1f} s."
    )


def _fallback_md(fb: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Auto-fallback ({'gates pass' if fb['passed'] else 'gates still fail'}: {fb['stopped']})",
        "",
        fallback_summary(fb),
        "",
        f"Pareto front (*: no other point has a {AXIS_NAMES.get(fb['pareto_axis'], fb['pareto_axis'])} as low with no more MACs "
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
