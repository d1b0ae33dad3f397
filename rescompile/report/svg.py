"""Small inline-SVG charts for the HTML report: no scripts, no fonts or files fetched at view time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

FONT = "font-family:system-ui,sans-serif;font-size:11px"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" style="{FONT}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2:.1f}" y="14" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
    ]


def histogram_overlay(
    series: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    bins: int = 24,
    width: int = 460,
    height: int = 220,
    markers: dict[str, dict[str, float]] | None = None,
) -> str:
    """Overlaid histograms on shared bins (one colour per series) with optional vertical markers (p50, p99)."""
    values = [v for s in series.values() for v in s]
    out = _open(width, height, title)
    left, right, top, bottom = 44, 12, 24 + 14 * len(series), 36
    pw, ph = width - left - right, height - top - bottom
    if not values:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no samples</text></svg>')
        return "\n".join(out)
    lo, hi = min(values), max(values)
    if hi <= lo:
        lo, hi = lo * 0.95, hi * 1.05 + 1e-6
    width_bin = (hi - lo) / bins
    counts: dict[str, list[float]] = {}
    for name, s in series.items():
        hits = [0] * bins
        for v in s:
            hits[min(int((v - lo) / width_bin), bins - 1)] += 1
        counts[name] = [n / max(len(s), 1) for n in hits]  # share of runs, so series of different lengths compare
    top_share = max(max(c) for c in counts.values()) or 1.0

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def y(share: float) -> float:
        return top + ph - share / top_share * ph

    for t in nice_ticks(lo, hi):
        if lo <= t <= hi:
            out.append(
                f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" y2="{top + ph + 4}" stroke="#666"/>'
                f'<text x="{x(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{_fmt(t)}</text>'
            )
    for t in nice_ticks(0, top_share * 100, 4):
        if t <= top_share * 100:
            out.append(
                f'<text x="{left - 4}" y="{y(t / 100) + 4:.1f}" text-anchor="end">{_fmt(t)}%</text>'
                f'<line x1="{left}" y1="{y(t / 100):.1f}" x2="{left + pw}" y2="{y(t / 100):.1f}" stroke="#eee"/>'
            )
    for i, (name, c) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        for b, share in enumerate(c):
            if share > 0:
                x0 = x(lo + b * width_bin)
                out.append(
                    f'<rect x="{x0:.1f}" y="{y(share):.1f}" width="{max(pw / bins - 1, 1):.1f}" '
                    f'height="{top + ph - y(share):.1f}" fill="{color}" fill-opacity="0.55">'
                    f"<title>{escape(name)}: {share * 100:.1f}% of runs in "
                    f"{_fmt(lo + b * width_bin)}-{_fmt(lo + (b + 1) * width_bin)}</title></rect>"
                )
        for label, v in (markers or {}).get(name, {}).items():
            out.append(
                f'<line x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{top + ph}" stroke="{color}" '
                f'stroke-dasharray="{"4 2" if label == "p99" else "none"}"><title>{escape(name)} {label} '
                f"{_fmt(v)}</title></line>"
            )
        ly = 20 + i * 14
        out.append(
            f'<rect x="{left}" y="{ly}" width="10" height="10" fill="{color}" fill-opacity="0.7"/>'
            f'<text x="{left + 14}" y="{ly + 9}">{escape(name)}</text>'
        )
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def diverging_bars(labels: Sequence[str], values: Sequence[float], *, title: str, unit: str = "", width: int = 460, row: int = 18) -> str:
    """Horizontal bars around zero: red for negative (worse), green for positive."""
    height = 30 + row * max(len(values), 1) + 24
    out = _open(width, height, title)
    left, right, top = 150, 50, 24
    pw = width - left - right
    span = max([abs(v) for v in values] + [1.0])  # at least +/-1 point, so no change shows as no bar
    mid = left + pw / 2

    def x(v: float) -> float:
        return mid + v / span * (pw / 2)

    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        yy = top + i * row
        x0, x1 = sorted((mid, x(v)))
        color = "#e15759" if v < 0 else "#59a14f"
        out.append(
            f'<text x="{left - 6}" y="{yy + row * 0.7:.1f}" text-anchor="end">{escape(lab)}</text>'
            f'<rect x="{x0:.1f}" y="{yy + 2}" width="{max(x1 - x0, 0.5):.1f}" height="{row - 5}" fill="{color}">'
            f"<title>{escape(lab)}: {v:+.2f}{escape(unit)}</title></rect>"
            f'<text x="{left + pw + 4}" y="{yy + row * 0.7:.1f}">{v:+.2f}</text>'
        )
    bottom = top + row * len(values)
    out.append(f'<line x1="{mid:.1f}" y1="{top}" x2="{mid:.1f}" y2="{bottom}" stroke="#333"/>')
    out.append(f'<text x="{mid:.1f}" y="{bottom + 16}" text-anchor="middle">0 ({escape(unit.strip())} change, scale +/-{span:.2g})</text>')
    out.append("</svg>")
    return "\n".join(out)


def layer_bars(
    names: Sequence[str],
    base: Sequence[float],
    total: Sequence[float],
    highlight: set[str],
    *,
    title: str,
    ylabel: str,
    width: int = 940,
    height: int = 260,
) -> str:
    """One column per layer in graph order: ``base`` (error arriving, also a black tick) in grey, the rest up to
    ``total`` in colour.

    Highlighted layers (the worst jumps) are red and numbered; hovering a column names its layer.
    """
    out = _open(width, height, title)
    left, right, top, bottom = 50, 10, 24, 40
    pw, ph = width - left - right, height - top - bottom
    finite = [v for v in list(total) + list(base) if math.isfinite(v)]
    hi = max(finite + [1e-9])
    n = max(len(names), 1)
    col = pw / n

    def y(v: float) -> float:
        return top + ph - min(v, hi) / hi * ph

    for t in nice_ticks(0, hi, 4):
        if t <= hi:
            out.append(
                f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + pw}" y2="{y(t):.1f}" stroke="#eee"/>'
                f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
            )
    for i, (name, b, t) in enumerate(zip(names, base, total, strict=True)):
        x0 = left + i * col
        lo = min(b, t)
        color = "#e15759" if name in highlight else "#4e79a7"
        tip = f"{escape(name)}: input {b:.4f}, output {t:.4f}, jump {t - b:+.4f}"
        out.append(
            f"<g><title>{tip}</title>"
            f'<rect x="{x0 + 1:.1f}" y="{y(lo):.1f}" width="{max(col - 2, 1):.1f}" height="{top + ph - y(lo):.1f}" fill="#bbb"/>'
            f'<rect x="{x0 + 1:.1f}" y="{y(t):.1f}" width="{max(col - 2, 1):.1f}" height="{max(y(lo) - y(t), 0):.1f}" '
            f'fill="{color}"/>'
            f'<line x1="{x0 + 1:.1f}" y1="{y(b):.1f}" x2="{x0 + col - 1:.1f}" y2="{y(b):.1f}" stroke="#333"/></g>'
        )
        if n <= 40 or name in highlight:
            out.append(f'<text x="{x0 + col / 2:.1f}" y="{top + ph + 13}" text-anchor="middle">{i}</text>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">layer (graph order; '
        f"black tick: error arriving, colour: error added, red: blamed)</text>"
    )
    out.append(
        f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" text-anchor="middle">{escape(ylabel)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def pareto_scatter(
    points: Sequence[tuple[str, float, float, bool]], *, title: str, xlabel: str, ylabel: str, width: int = 460, height: int = 260
) -> str:
    """One circle per ``(label, x, y, on_front)``, lower is better on both axes; the front filled and joined by a line."""
    out = _open(width, height, title)
    left, right, top, bottom = 56, 16, 24, 40
    pw, ph = width - left - right, height - top - bottom
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no points</text></svg>')
        return "\n".join(out)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    xt, yt = nice_ticks(min(xs + [0.0]), max(xs), 4), nice_ticks(min(ys + [0.0]), max(ys), 4)
    x0, x1, y0, y1 = xt[0], max(xt[-1], xt[0] + 1e-9), yt[0], max(yt[-1], yt[0] + 1e-9)

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    for t in xt:
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    for t in yt:
        out.append(
            f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>')
    front = sorted((x, y) for _, x, y, on in points if on)
    if len(front) > 1:
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        out.append(f'<polyline points="{d}" fill="none" stroke="#e15759" stroke-dasharray="4 3"/>')
    for label, x, y, on in points:
        color = "#e15759" if on else "#ffffff"
        out.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color}" stroke="{"#e15759" if on else "#4e79a7"}" stroke-width="2">'
            f"<title>{escape(label)}: {_fmt(x)}, {_fmt(y)}{' (Pareto front)' if on else ''}</title></circle>"
        )
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" text-anchor="middle">{escape(ylabel)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)
