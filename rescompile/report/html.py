"""report.html: one static page (inline CSS and SVG, no scripts, nothing fetched) with the report's plots.

Sections (each an element id): ``summary``, ``gates``, ``blocks``, ``latency``, ``per-class``,
``layerwise``, ``fallback``, ``details``. Plots: the residual blocks (where each Q/DQ sits and
why, what fuses, what stays in FP: ``report/blocks_svg.py``), latency distribution of the FP32
baseline and the candidate per batch size, per-class accuracy delta, per-layer error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from rescompile.report.blocks_svg import blocks_section
from rescompile.report.markdown import AXIS_NAMES, class_label, fallback_rows, fallback_summary
from rescompile.report.svg import diverging_bars, histogram_overlay, layer_bars, pareto_scatter
from rescompile.validate.metrics import drop_text, interval_rows
from rescompile.validate.results import section_dict
from rescompile.validate.schema import REPORT_SCHEMA

if TYPE_CHECKING:
    from rescompile.report.blocks import BlockPicture
    from rescompile.validate.latency import Latency
    from rescompile.validate.results import Report

SECTIONS = ("summary", "gates", "blocks", "latency", "per-class", "layerwise", "fallback", "details")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:980px;color:#222}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}code{font-size:12px}
.pass{color:#2b7a2b;font-weight:bold}.fail{color:#c0392b;font-weight:bold}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff}
.badge.pass{background:#2b7a2b;color:#fff}.badge.fail{background:#c0392b;color:#fff}
.plots{display:flex;flex-wrap:wrap;gap:12px}.note{color:#666;font-size:13px}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.blocks{max-height:720px;overflow:auto;border:1px solid #ddd;padding:2px 0}.blocks svg{display:block}
.blocks>div:nth-child(even){background:#f6f6f6}table.rules td{font-size:12px}
"""


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _num(v: Any, fmt: str = ".4g") -> str:
    return "n/a" if v is None else f"{v:{fmt}}"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are already escaped HTML; the first ``left`` columns are left-aligned."""
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _summary(r: Report) -> str:
    m = r.measurement
    acc, agr = m.accuracy, m.agreement
    rows = [
        ["top-1", _pct(acc.reference.top1), _pct(acc.candidate.top1)],
        ["top-5", _pct(acc.reference.top5), _pct(acc.candidate.top5)],
        ["top-1 drop (points)", "", _num(acc.top1_drop, ".2f")],
        ["top-1 agreement", "", _pct(agr.top1)],
        ["logit cosine mean / worst", "", f"{agr.cosine_mean:.5f} / {agr.cosine_min:.5f}"],
        ["max / mean abs error", "", f"{agr.max_abs_error:.4g} / {agr.mean_abs_error:.4g}"],
        *([escape(label), "", escape(text)] for label, text in interval_rows(acc, agr)),
    ]
    return (
        f"<p>{m.samples} samples from <code>{escape(str(m.source))}</code>. Reference "
        f"<code>{escape(str(m.reference))}</code>, candidate <code>{escape(str(m.candidate))}</code>"
        f"{', baseline <code>' + escape(str(m.baseline)) + '</code>' if m.baseline else ''}.</p>"
        + _validation(r)
        + _table(["metric", "reference", "candidate"], rows)
    )


def _validation(r: Report) -> str:
    """How the validation set was chosen; in-sample results are flagged."""
    choice = section_dict(r.validation)
    if not choice.get("description"):
        return ""
    if choice.get("in_sample"):
        return f'<p class="note" id="in-sample"><strong>Validation: {escape(choice["description"])}</strong></p>'
    return f'<p class="note">Validation: {escape(choice["description"])}</p>'


def _gates(r: Report) -> str:
    if not r.gates:
        return '<p class="note">No gates were set (see --max-top1-drop, --min-agreement, --gates gates.yaml).</p>'
    rows = [
        [
            escape(g.name),
            f"<code>{escape(g.metric)}</code>",
            _num(g.value, ".6g"),
            escape(" ".join(x for x in (g.interval_text(".6g"), g.side or "") if x)) or "—",
            f"{escape(g.comparison)} {g.threshold:g}",
            escape(g.mode or "—"),
            "abstains" if g.abstained else '<span class="pass">pass</span>' if g.passed else '<span class="fail">FAIL</span>',
        ]
        for g in r.gates
    ]
    notes = "".join(f'<p class="note">{escape(g.name)}: {escape(g.settle_text())}</p>' for g in r.gates if g.settle_text())
    return _table(["gate", "metric", "value", "95% interval", "threshold", "mode", "result"], rows, left=2) + notes


def _latency(r: Report) -> str:
    m = r.measurement
    lat = m.latency
    if not lat:
        return '<p class="note">Latency was not measured.</p>'

    def label(x: Latency) -> str:
        return x.runner + ("" if x.role != "baseline" else " (baseline)")

    plots = []
    for batch in sorted({x.batch for x in lat}):
        recs = [x for x in lat if x.batch == batch]
        series: dict[str, Sequence[float]] = {label(x): x.samples_ms for x in recs}
        markers = {label(x): {"p50": x.p50_ms, "p99": x.p99_ms} for x in recs}
        plots.append(
            histogram_overlay(series, title=f"latency per call, batch {batch}", xlabel="ms (solid: p50, dashed: p99)", markers=markers)
        )
    rows = [
        [
            escape(x.runner),
            str(x.batch),
            str(x.runs),
            f"{x.p50_ms:.3f}",
            f"{x.p90_ms:.3f}",
            f"{x.p99_ms:.3f}",
            f"{x.throughput:.0f}",
            _num(x.peak_rss_mib, ".0f"),
        ]
        for x in lat
    ]
    speed = m.speedup
    note = (
        ("<p>Speedup over the FP32 baseline (p50): " + ", ".join(f"batch {b}: <b>{v:.2f}x</b>" for b, v in speed.items()) + ".</p>")
        if speed
        else ""
    )
    mem = m.peak_rss_mib
    mem_note = f'<p class="note">Peak resident memory of the validating process: {mem:.0f} MiB.</p>' if mem else ""
    notes = "".join(f'<p class="note"><b>Note:</b> {escape(n)}</p>' for n in r.notes)
    warnings = [w.to_dict() for w in r.warnings or []]
    notes += "".join(f'<p class="note"><b>Warning ({escape(w["code"])}):</b> {escape(w["message"])}</p>' for w in warnings)
    return (
        f'<div class="plots">{"".join(plots)}</div>'
        + _table(["runner", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "samples/s", "peak RSS MiB"], rows)
        + note
        + mem_note
        + notes
    )


def _per_class(r: Report) -> str:
    m = r.measurement
    pc = m.per_class
    if not pc:
        return '<p class="note">No labels: per-class accuracy needs a labelled validation set.</p>'
    ordered = sorted(pc, key=lambda d: d.label)
    chart = diverging_bars(
        [class_label(m, d.label) for d in ordered],
        [d.delta for d in ordered],
        title="per-class top-1 change, candidate minus reference",
        unit=" points",
    )
    rows = [
        [
            escape(class_label(m, d.label)),
            str(d.samples),
            _pct(d.reference_top1),
            _pct(d.candidate_top1),
            f"{d.delta:+.2f}",
            escape(drop_text(d.drop)),
            _num(d.p_holm, ".3g"),
        ]
        for d in pc[:5]
    ]
    return f'<div class="plots">{chart}</div><p>Worst classes (drop: simultaneous 95% intervals, Bonferroni):</p>' + _table(
        ["class", "samples", "reference top-1", "candidate top-1", "delta", "drop [interval]", "p (Holm)"], rows
    )


def _layerwise(r: Report) -> str:
    lw = r.layerwise
    if lw is None:
        return '<p class="note">Not run: pass --layerwise to compare FP32 and INT8 tensor by tensor.</p>'
    layers = lw.layers
    suggested = set(lw.suggested_keep_fp)
    worst = {x.node for x in layers if x.keep_fp in suggested}
    chart = layer_bars(
        [x.node for x in layers],
        [x.input_rel_error for x in layers],
        [x.output_rel_error for x in layers],
        worst,
        title="per-layer relative error, FP32 vs quantized",
        ylabel="relative error",
    )
    index = {x.node: i for i, x in enumerate(layers)}
    by_name = {x.node: x for x in layers}
    rows = [
        [
            str(index[n]),
            f"<code>{escape(n)}</code>",
            escape(by_name[n].op),
            f"{by_name[n].input_rel_error:.4f}",
            f"{by_name[n].output_rel_error:.4f}",
            f"{by_name[n].jump:+.4f}",
            f"{by_name[n].cosine:.5f}",
        ]
        for n in lw.ranking[:8]
    ]
    hint = ""
    if lw.suggested_keep_fp:
        hint = "<p>To recover accuracy, try: " + " ".join(f"<code>--keep-fp '{escape(p)}'</code>" for p in lw.suggested_keep_fp) + "</p>"
    return (
        f'<p class="note">{lw.samples} samples; each column is a layer where quantization enters.</p>'
        f'<div class="plots">{chart}</div>'
        + _table(["#", "layer", "op", "input rel. error", "output rel. error", "jump", "cosine"], rows, left=3)
        + hint
    )


def _fallback(r: Report) -> str:
    fb = r.fallback
    if fb is None:
        return '<p class="note">Not run: pass --auto-fallback N to keep units in FP until the gates pass.</p>'
    rows = fallback_rows(fb)
    cells = [
        [
            row["step"],
            f"<code>{escape(row['unit'])}</code>",
            escape(row["result"]),
            row["top1_drop"],
            row["agreement"],
            row["cosine"],
            row["fp_macs"],
            row["p50_ms"],
            "&#9733;" if row["pareto"] else "",
            escape(row["fusion"]),
        ]
        for row in rows
    ]
    axis = fb.pareto_axis
    points = [
        (f"step {row['step']}: {row['unit']}", p.fp_macs_share * 100, p.error(axis), bool(row["pareto"]))
        for row, p in zip(rows, [fb.initial] + [s.after for s in fb.steps], strict=True)
    ]
    plot = pareto_scatter(
        points, title="Auto-fallback: accuracy against FP kept", xlabel="share of MACs in FP, %", ylabel=AXIS_NAMES.get(axis, axis)
    )
    status = '<span class="pass">gates pass</span>' if fb.passed else '<span class="fail">gates still fail</span>'
    return (
        f'<p>{status}: {escape(fb.stopped)}.</p><p class="note">{escape(fallback_summary(fb).replace("`", ""))}</p>'
        f'<div class="plots">{plot}</div>'
        + _table(
            ["step", "unit", "result", "top-1 drop", "agreement", "cosine mean", "FP MACs", "p50 ms", "Pareto", "fusion given up"],
            cells,
            left=3,
        )
    )


def _details(r: Report) -> str:
    doc = r.to_dict()
    keep = {k: doc[k] for k in ("model", "settings", "timings_s", "stages", "calibration", "memory") if k in doc}
    return f"<pre>{escape(json.dumps(keep, indent=2, sort_keys=True, default=str))}</pre>"


def render_html(report: Report, blocks: BlockPicture | None = None) -> str:
    """The whole page as a string (UTF-8, self-contained).

    Args:
        report: the report.
        blocks: the build's residual blocks (``report/blocks.py``); None: the section says it has none.
    """
    passed = report.all_passed
    title = f"rescompile: {report.model.name} {report.candidate}"
    parts = {
        "summary": ("Summary", _summary(report)),
        "gates": ("Gates", _gates(report)),
        "blocks": ("Residual blocks: Q/DQ placement and fusion", blocks_section(blocks)),
        "latency": ("Latency", _latency(report)),
        "per-class": ("Per-class accuracy", _per_class(report)),
        "layerwise": ("Layerwise blame", _layerwise(report)),
        "fallback": ("Auto-fallback", _fallback(report)),
        "details": ("Details", _details(report)),
    }
    body = "".join(f'<section id="{sid}"><h2>{escape(h)}</h2>{html}</section>' for sid, (h, html) in parts.items())
    badge = '<span class="badge pass">PASSED</span>' if passed else '<span class="badge fail">FAILED</span>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{escape(title)} {badge}</h1>"
        f'<p class="note">schema {escape(REPORT_SCHEMA)}</p>{body}</body></html>\n'
    )
