"""A sweep's summary: sweep.json, sweep.md and sweep.html (a table and an inline-SVG plot, Pareto front marked).

The plot puts each finished configuration at (candidate p50 latency, accuracy): top-1 where every
build has labels, else top-1 agreement with FP32. A configuration is on the Pareto front when no
other is at least as fast and at least as accurate, and strictly better in one of the two.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from rescompile.io import write_text_atomic

W, H, PAD = 640, 400, 56


def accuracy_axis(results: list[dict[str, Any]]) -> str:
    """``top1`` when every plotted build has labels, else ``agreement``."""
    plotted = [r for r in results if r.get("p50_ms") is not None]
    return "top1" if plotted and all(r.get("top1") is not None for r in plotted) else "agreement"


def pareto(results: list[dict[str, Any]], axis: str) -> set[str]:
    """Keys of the configurations no other beats on both latency (lower) and ``axis`` (higher)."""
    pts = [(r["key"], float(r["p50_ms"]), float(r[axis])) for r in results if r.get("p50_ms") is not None and r.get(axis) is not None]
    front = set()
    for k, lat, acc in pts:
        if not any(lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc) for _, lat2, acc2 in pts):
            front.add(k)
    return front


def _label(r: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in r.get("params", {}).items()) or r["key"][:12]


def svg_plot(results: list[dict[str, Any]], axis: str, front: set[str]) -> str:
    """Accuracy against latency, one circle per configuration; the Pareto front filled and joined by a line."""
    pts = [r for r in results if r.get("p50_ms") is not None and r.get(axis) is not None]
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80"><text x="10" y="40">no finished build to plot</text></svg>'
    xs, ys = [float(r["p50_ms"]) for r in pts], [float(r[axis]) for r in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 * 0.9, x1 * 1.1) if x1 - x0 < 1e-9 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 1, y1 + 1) if y1 - y0 < 1e-9 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))

    def sx(v: float) -> float:
        return PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD)

    def sy(v: float) -> float:
        return H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{axis} against latency">',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<text x="{W / 2}" y="{H - 14}" text-anchor="middle" font-size="13">candidate p50 latency, ms</text>',
        f'<text x="16" y="{H / 2}" text-anchor="middle" font-size="13" transform="rotate(-90 16 {H / 2})">'
        f"{'top-1, %' if axis == 'top1' else 'top-1 agreement with FP32, %'}</text>",
    ]
    for v in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{sx(v):.1f}" y="{H - PAD + 16}" text-anchor="middle" font-size="11">{v:.3g}</text>')
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{PAD - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.4g}</text>')
    line = sorted((float(r["p50_ms"]), float(r[axis])) for r in pts if r["key"] in front)
    if len(line) > 1:
        d = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in line)
        parts.append(f'<polyline points="{d}" fill="none" stroke="#c0392b" stroke-dasharray="4 3"/>')
    for r in pts:
        on = r["key"] in front
        parts.append(
            f'<circle cx="{sx(float(r["p50_ms"])):.1f}" cy="{sy(float(r[axis])):.1f}" r="6" '
            f'fill="{"#c0392b" if on else "#ffffff"}" stroke="{"#c0392b" if on else "#2c3e50"}" stroke-width="2" '
            f'class="{"pareto" if on else "point"}"><title>{html.escape(_label(r))}: {float(r["p50_ms"]):.3g} ms, '
            f"{float(r[axis]):.4g}%{' (Pareto front)' if on else ''}</title></circle>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, int | float) else str(v)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    axis = accuracy_axis(results)
    front = pareto(results, axis)
    rows = [{**r, "pareto": r["key"] in front} for r in results]
    counts = {s: sum(1 for r in results if r.get("status") == s) for s in ("ok", "gate-failed", "error")}
    return {
        "schema": "rescompile.sweep/1",
        "axis": axis,
        "builds": len(results),
        "counts": counts,
        "skipped": sum(1 for r in results if r.get("skipped")),
        "results": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    axis = doc["axis"]
    lines = [
        f"# rescompile sweep: {doc['builds']} builds",
        "",
        f"{doc['counts']['ok']} ok, {doc['counts']['gate-failed']} missed a gate, {doc['counts']['error']} failed; "
        f"{doc['skipped']} reused from an earlier run. Pareto front (latency against {axis}): marked *.",
        "",
        f"| | configuration | status | {axis} % | cosine | p50 ms (batch) | folder |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        status = r["status"] + (f": {str(r.get('error') or '').split(chr(10))[0]}" if r["status"] == "error" else "")
        lines.append(
            f"| {'*' if r['pareto'] else ''} | {_label(r)} | {status.replace('|', '/')} | {_fmt(r.get(axis))} | "
            f"{_fmt(r.get('cosine_mean'), '.5f')} | {_fmt(r.get('p50_ms'), '.3f')} ({_fmt(r.get('latency_batch'), 'd')}) | "
            f"{r.get('folder', '-')} |"
        )
    return "\n".join(lines) + "\n"


def html_page(doc: dict[str, Any]) -> str:
    axis = doc["axis"]
    rows = "\n".join(
        f'<tr class="{"pareto" if r["pareto"] else ""}"><td>{"&#9733;" if r["pareto"] else ""}</td><td>{html.escape(_label(r))}</td>'
        f"<td>{html.escape(r['status'])}</td><td>{_fmt(r.get(axis))}</td><td>{_fmt(r.get('cosine_mean'), '.5f')}</td>"
        f"<td>{_fmt(r.get('p50_ms'), '.3f')}</td><td>{html.escape(str(r.get('error', '')))}</td></tr>"
        for r in doc["results"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rescompile sweep</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.pareto{{background:#fdecea}}</style></head><body>
<h1>rescompile sweep: {doc["builds"]} builds</h1>
<p>{doc["counts"]["ok"]} ok, {doc["counts"]["gate-failed"]} missed a gate, {doc["counts"]["error"]} failed; {doc["skipped"]} reused.
Filled red: the Pareto front (no other build is both faster and more accurate).</p>
{svg_plot(doc["results"], axis, {r["key"] for r in doc["results"] if r["pareto"]})}
<table><tr><th></th><th>configuration</th><th>status</th><th>{axis} %</th><th>cosine</th><th>p50 ms</th><th>error</th></tr>
{rows}
</table></body></html>
"""


def write_summary(folder: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write sweep.json, sweep.md and sweep.html into ``folder``; return the summary."""
    doc = summary(results)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "sweep.json", json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    write_text_atomic(folder / "sweep.md", markdown(doc))
    write_text_atomic(folder / "sweep.html", html_page(doc))
    return doc
