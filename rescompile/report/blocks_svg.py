"""The block picture of report.html: one inline SVG row per residual block, a legend, no scripts.

Each row: the block input on the left, the main branch on the upper lane, the shortcut on the
lower lane, both meeting at the Add (a circle), then the ReLU after it. A purple diamond is a
Q/DQ pair, with its rule codes under it; a box is an op (blue: INT8 weights, grey: float op
without weights, orange: kept in floating point); a dashed green frame is one kernel of the
target runtime (TensorRT's Conv+Add+ReLU, ONNX Runtime's QLinearConv/QLinearAdd). Hovering any
mark shows the node, the rule texts and the reason. On a GPU build a last line names the engine
layer the Add was fused into. docs/report.md explains every mark.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # drawing needs only the records' fields: the page renders without onnx imported
    from rescompile.report.blocks import Block, BlockPicture, Mark, Op

FONT = "font-family:system-ui,sans-serif;font-size:10px"
INT8, FLOAT, KEPT, QDQ, FUSE, EDGE = "#4e79a7", "#e9e9e9", "#f28e2b", "#8e44ad", "#2e8b3a", "#555"
CHANGED = "#b03a2e"  # the EQ / BC marks of a layer a build stage changed (blocks.CHANGE_MARKS)
CHANGED_BY = {
    "EQ": "cross-layer equalization (--equalize): channels rescaled, bias maybe absorbed; function unchanged",
    "BC": "bias correction (--bias-correction): the INT8 mean output shift subtracted from the bias",
}
ENGINE_OK = ("fused-int8", "dla-io-int8")
BW, BH, GAP, R = 66, 22, 44, 10  # box width/height, gap between boxes (room for a Q/DQ), Add radius
LABEL_W, MAIN_Y, SHORT_Y = 118, 30, 70  # label column, lane centres
SHORT_NAMES = {
    "GlobalAveragePool": "GAP",
    "AveragePool": "AvgPool",
    "BatchNormalization": "BN",
    "HardSigmoid": "HSigmoid",
    "HardSwish": "HSwish",
    "ConvTranspose": "ConvT",
}


def _box_text(op: Op) -> str:
    name = SHORT_NAMES.get(op.op, op.op[:9])
    text = f"{name} {op.detail}".strip()
    return text if len(text) <= 12 else text[:11] + "…"


def _op_title(op: Op) -> str:
    lines = [op.node, f"{op.op} {op.detail}".strip()]
    lines += [f"{m}: {CHANGED_BY.get(m, 'changed by a build stage')}" for m in op.changes]
    if op.kept:
        lines.append(f"kept in floating point ({op.kept}; R8): no Q/DQ on its input, float weights")
    elif op.weight_rule:
        lines.append(f"weights: {op.weight_rule}")
    return "\n".join(lines)


def _mark_title(m: Mark, rules: dict[str, str]) -> str:
    head = f"Q/DQ pair on {m.tensor}" + (f" ({m.dtype})" if m.dtype else "")
    if m.consumers > 1:
        head += f", one pair read by {m.consumers} inputs"
    body = [f"  {r}" + (f" [{rules[c]}]" if (c := r.split(":")[0]) in rules else "") for r in m.rules]
    return "\n".join([head, *body])


class _Row:
    """Draws one block into a list of SVG elements; x positions advance along the lanes."""

    def __init__(self, block: Block, rules: dict[str, str], add_x: int) -> None:
        self.b, self.rules, self.add_x = block, rules, add_x
        self.out: list[str] = []
        self.boxes: dict[str, tuple[int, int]] = {}  # node -> (x, y centre) of its box or circle

    def line(self, x1: int, y1: int, x2: int, y2: int) -> None:
        self.out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{EDGE}" stroke-width="1.2"/>')

    def diamond(self, x: int, y: int, m: Mark) -> None:
        codes = m.codes or ("Q/DQ",)
        lines = [" ".join(codes[i : i + 2]) for i in range(0, len(codes), 2)]  # two codes a line: fits one gap
        text = "".join(
            f'<text x="{x}" y="{y + 16 + 10 * i}" text-anchor="middle" fill="{QDQ}" font-size="9">{escape(t)}</text>'
            for i, t in enumerate(lines)
        )
        self.out.append(
            f'<g class="qdq"><title>{escape(_mark_title(m, self.rules))}</title>'
            f'<path d="M{x} {y - 6}L{x + 6} {y}L{x} {y + 6}L{x - 6} {y}Z" fill="{QDQ}"/>{text}</g>'
        )

    def box(self, x: int, y: int, op: Op) -> None:
        fill, ink = {"int8": (INT8, "#fff"), "fp": (KEPT, "#fff"), "float": (FLOAT, "#222")}[op.precision]
        label = _box_text(op) + (" FP" if op.kept else "")
        fit = f' textLength="{BW - 6}" lengthAdjust="spacingAndGlyphs"' if len(label) > 11 else ""  # squeezed, never spilled
        self.out.append(
            f'<g class="op {op.precision}"><title>{escape(_op_title(op))}</title>'
            f'<rect x="{x}" y="{y - BH // 2}" width="{BW}" height="{BH}" rx="3" fill="{fill}" stroke="#333" '
            f'stroke-width="0.6"/><text x="{x + BW // 2}" y="{y + 4}" text-anchor="middle" fill="{ink}"{fit}>'
            f"{escape(label)}</text>{self.badge(x, y, op)}</g>"
        )
        self.boxes[op.node] = (x + BW // 2, y)

    @staticmethod
    def badge(x: int, y: int, op: Op) -> str:
        """What a stage changed in the op (``EQ``, ``BC``), in small type over the box's right end."""
        if not op.changes:
            return ""
        return (
            f'<text class="changed" x="{x + BW - 1}" y="{y - BH // 2 - 2}" text-anchor="end" fill="{CHANGED}" '
            f'font-size="8">{escape(" ".join(op.changes))}</text>'
        )

    def lane(self, ops: Sequence[Op], y: int, x: int, skip_first_mark: bool) -> int:
        """Boxes from ``x`` along lane ``y`` with the Q/DQ in each gap; returns the x after the last box."""
        for i, op in enumerate(ops):
            self.line(x, y, x + GAP, y)
            if op.qdq_in is not None and not (i == 0 and skip_first_mark):
                self.diamond(x + GAP // 2, y, op.qdq_in)
            x += GAP
            self.box(x, y, op)
            x += BW
        return x

    def draw(self) -> list[str]:
        b = self.b
        first_short = b.shortcut[0].qdq_in if b.shortcut else b.shortcut_into_add
        first_main = b.main[0].qdq_in if b.main else b.main_into_add
        shared = first_main is not None and first_short is not None and first_main.tensor == first_short.tensor
        x = LABEL_W
        self.out.append(f'<circle cx="{x}" cy="{MAIN_Y}" r="3" fill="{EDGE}"><title>block input {escape(b.block_input)}</title></circle>')
        fork = x + (GAP if shared else 8)
        self.line(x, MAIN_Y, fork, MAIN_Y)
        if shared:
            self.diamond(x + GAP // 2, MAIN_Y, first_main)  # type: ignore[arg-type]
        self.line(fork, MAIN_Y, fork, SHORT_Y)
        end_main = self.lane(b.main, MAIN_Y, fork, shared)
        self.line(end_main, MAIN_Y, self.add_x - R, MAIN_Y)
        if b.main_into_add is not None and b.main:
            self.diamond(self.add_x - R - GAP // 2, MAIN_Y, b.main_into_add)
        end_short = self.lane(b.shortcut, SHORT_Y, fork, shared)
        self.line(end_short, SHORT_Y, self.add_x, SHORT_Y)
        self.line(self.add_x, SHORT_Y, self.add_x, MAIN_Y + R)
        if b.shortcut_into_add is not None and not (shared and not b.shortcut):
            self.diamond(self.add_x - GAP // 2, SHORT_Y, b.shortcut_into_add)
        self.add_circle()
        x = self.add_x + R
        if b.follower is not None:
            self.line(x, MAIN_Y, x + GAP // 2, MAIN_Y)
            self.box(x + GAP // 2, MAIN_Y, b.follower)
            x += GAP // 2 + BW
        self.line(x, MAIN_Y, x + GAP, MAIN_Y)
        if b.output_mark is not None:
            self.diamond(x + GAP // 2, MAIN_Y, b.output_mark)
        x += GAP
        self.out.append(f'<path d="M{x} {MAIN_Y - 4}L{x + 7} {MAIN_Y}L{x} {MAIN_Y + 4}Z" fill="{EDGE}"/>')
        self.fusions()
        return self.out

    def add_circle(self) -> None:
        b = self.b
        fill = KEPT if b.add_kept else (INT8 if b.fused else FLOAT)
        ink = "#fff" if b.add_kept or b.fused else "#222"
        tip = [b.add, f"{b.kernel}" + (f" ({b.rule})" if b.rule else "")]
        if b.add_kept:
            tip.append(f"kept in floating point ({b.add_kept}; R8)")
        self.out.append(
            f'<g class="add"><title>{escape(chr(10).join(tip))}</title>'
            f'<circle cx="{self.add_x}" cy="{MAIN_Y}" r="{R}" fill="{fill}" stroke="#333" stroke-width="0.6"/>'
            f'<text x="{self.add_x}" y="{MAIN_Y + 4}" text-anchor="middle" fill="{ink}" font-size="13">+</text>'
            "</g>"
        )
        self.boxes[b.add] = (self.add_x, MAIN_Y)

    def fusions(self) -> None:
        for f in self.b.fusions:
            pts = [(*self.boxes[n], R if n == self.b.add else BW // 2) for n in f.nodes if n in self.boxes]
            if not pts:
                continue
            x0 = min(x - half for x, _, half in pts) - 4
            x1 = max(x + half for x, _, half in pts) + 4
            ys = [y for _, y, _ in pts]
            y0, y1 = min(ys) - BH // 2 - 5, max(ys) + BH // 2 + 5
            label = f.kernel if len(f.kernel) <= (x1 - x0) // 5 else f.kernel.split(" (")[0]
            label_y = y1 + 10 if min(ys) == SHORT_Y else y0 - 3  # a shortcut kernel is named under it, clear of the main lane
            self.out.append(
                f'<g class="fusion"><title>{escape(f.kernel)}: {escape(", ".join(f.nodes))}</title>'
                f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" rx="6" fill="none" '
                f'stroke="{FUSE}" stroke-dasharray="4 2"/>'
                f'<text x="{x0 + 3}" y="{label_y}" fill="{FUSE}" font-size="9">{escape(label)}</text></g>'
            )


def _engine_line(b: Block, y: int) -> str:
    e = b.engine
    if e is None:
        return ""
    color = FUSE if e.status in ENGINE_OK else "#c0392b"
    name = e.name or "(no layer)"
    short = name if len(name) <= 90 else name[:44] + " … " + name[-44:]
    tip = f"{name}\n{e.layer_type or ''} {e.status}" + (f"\n{e.note}" if e.note else "")
    return (
        f'<g class="engine"><title>{escape(tip)}</title><text x="{LABEL_W}" y="{y}" fill="{color}">engine layer '
        f"[{escape(e.status)}]: {escape(short)}</text></g>"
    )


def block_svg(b: Block, rules: dict[str, str], add_x: int, index: int) -> str:
    """One residual block as an SVG row; ``add_x`` puts the Add of every row in one column."""
    row = _Row(b, rules, add_x)
    body = row.draw()
    width = add_x + R + GAP // 2 + BW + GAP + 16
    height = SHORT_Y + 32 + (18 if b.engine is not None else 0)
    title = f"{b.add}: {b.shortcut_kind} shortcut, {b.kernel}"
    head = (
        f'<text x="4" y="{MAIN_Y + 4}" font-weight="bold">{escape(b.label[:20])}</text>'
        f'<text x="4" y="{MAIN_Y + 18}" fill="#666">{escape(b.shortcut_kind)}</text>'
        f'<text x="4" y="{SHORT_Y + 4}" fill="#888" font-size="9">#{index}</text>'
    )
    return (
        f'<svg class="block" id="block-{index}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" style="{FONT}">'
        f"<title>{escape(title)}</title>{head}{''.join(body)}{_engine_line(b, SHORT_Y + 41)}</svg>"
    )


def legend_svg(changes: bool = False) -> str:
    """The marks of the picture, drawn as they appear in it (``changes``: with the EQ / BC marks)."""
    items = [
        f'<rect x="0" y="-9" width="34" height="16" rx="3" fill="{INT8}"/><text x="40" y="3">INT8 op (quantized weights)</text>',
        f'<rect x="0" y="-9" width="34" height="16" rx="3" fill="{FLOAT}" stroke="#333" stroke-width="0.6"/>'
        '<text x="40" y="3">op without weights</text>',
        f'<rect x="0" y="-9" width="34" height="16" rx="3" fill="{KEPT}"/><text x="40" y="3">kept in floating point (R8)</text>',
        f'<path d="M17 -7L24 0L17 7L10 0Z" fill="{QDQ}"/><text x="40" y="3">Q/DQ pair (rule codes under it)</text>',
        f'<rect x="0" y="-9" width="34" height="16" rx="5" fill="none" stroke="{FUSE}" stroke-dasharray="4 2"/>'
        '<text x="40" y="3">one fused kernel</text>',
        f'<circle cx="17" cy="0" r="8" fill="{INT8}"/><text x="13" y="4" fill="#fff">+</text><text x="40" y="3">'
        "residual Add (blue: fused)</text>",
    ]
    if changes:
        items.append(
            f'<text x="34" y="-2" text-anchor="end" fill="{CHANGED}" font-size="8">EQ BC</text><text x="40" y="3">'
            "changed by --equalize (EQ) / --bias-correction (BC)</text>"
        )
    cols, col_w = 3, 250
    rows = -(-len(items) // cols)
    out = [f'<g transform="translate({6 + (i % cols) * col_w},{14 + (i // cols) * 22})">{s}</g>' for i, s in enumerate(items)]
    h = 8 + rows * 22
    return (
        f'<svg class="legend" xmlns="http://www.w3.org/2000/svg" width="{cols * col_w}" height="{h}" '
        f'viewBox="0 0 {cols * col_w} {h}" role="img" aria-label="legend" style="{FONT}"><title>legend</title>'
        f"{''.join(out)}</svg>"
    )


def _summary(pic: BlockPicture) -> str:
    kinds = Counter(b.shortcut_kind for b in pic.blocks)
    kernels = Counter(b.kernel for b in pic.blocks)
    kept = sum(o.precision == "fp" for b in pic.blocks for o in (*b.main, *b.shortcut)) + sum(bool(b.add_kept) for b in pic.blocks)
    parts = [
        f"{len(pic.blocks)} residual Adds (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")",
        "; ".join(f"{n} &times; {escape(k)}" for k, n in sorted(kernels.items())),
        f"{kept} op(s) in blocks kept in floating point",
    ]
    engine = Counter(b.engine.status for b in pic.blocks if b.engine is not None)
    if engine:
        parts.append("engine: " + ", ".join(f"{n} {escape(s)}" for s, n in sorted(engine.items())))
    return f"<p><b>{escape(pic.policy)}</b> policy: " + ". ".join(parts) + ".</p>"


def _rules_table(pic: BlockPicture) -> str:
    used = {c for b in pic.blocks for _, m in b.marks() for c in m.codes}
    used |= {o.weight_rule.split(":")[0] for b in pic.blocks for o in (*b.main, *b.shortcut) if o.weight_rule}
    used |= {b.rule.split(":")[0] for b in pic.blocks if b.rule}
    if any(o.kept for b in pic.blocks for o in (*b.main, *b.shortcut)) or pic.kept_outside:
        used.add("R8")
    rows = "".join(
        f'<tr><td class="l"><code>{escape(c)}</code></td><td class="l">{escape(t)}</td></tr>'
        for c, t in sorted(pic.rules.items())
        if c in used
    )
    return (
        (
            f'<table class="rules"><thead><tr><th class="l">rule</th><th class="l">meaning (docs/placement-rules.md)'
            f"</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        if rows
        else ""
    )


def blocks_section(pic: BlockPicture | None) -> str:
    """The ``blocks`` section's HTML: summary, legend, one SVG per residual block, the rules they cite."""
    if pic is None:
        return (
            '<p class="note">No block picture: the report was written without the build\'s model.int8.onnx '
            "and qdq_plan.json next to it (or they could not be read: see the log).</p>"
        )
    if not pic.blocks:
        return f'<p class="note">No residual Add in this model ({escape(pic.policy)} policy): nothing to draw.</p>'
    most = max(len(b.main) for b in pic.blocks)
    add_x = LABEL_W + GAP + most * (GAP + BW) + GAP + R
    rows = "".join(f"<div>{block_svg(b, pic.rules, add_x, i)}</div>" for i, b in enumerate(pic.blocks))
    outside = ""
    if pic.kept_outside:
        outside = (
            '<p class="note">Kept in floating point outside the blocks: '
            + ", ".join(f"<code>{escape(n)}</code> ({escape(op)}, {escape(why)})" for n, op, why in pic.kept_outside)
            + ".</p>"
        )
    return (
        _summary(pic)
        + legend_svg(bool(pic.changed))
        + outside
        + f'<div class="blocks">{rows}</div>'
        + _rules_table(pic)
        + '<p class="note">Hover a mark for its node, tensor and rule text. Upper lane: main branch; lower lane: '
        "shortcut; a diamond at the fork is one Q/DQ pair both branches read.</p>"
    )
