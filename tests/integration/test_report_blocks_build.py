"""The block picture in the report.html of a real demo build: one figure per residual Add, and what chromium shows."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np

from rescompile.report.blocks_svg import INT8, QDQ
from tests.tools import CHROMIUM, require


def test_demo_report_draws_every_residual_add_of_the_plan(small_demo_build: Path):
    page = (small_demo_build / "report.html").read_text()
    plan = json.loads((small_demo_build / "qdq_plan.json").read_text())
    report = json.loads((small_demo_build / "report.json").read_text())
    section = page[page.index('<section id="blocks">') : page.index('<section id="latency">')]
    ids = [int(i) for i in re.findall(r'<svg class="block" id="block-(\d+)"', section)]
    assert ids == list(range(len(plan["residual_adds"]))) and len(ids) == report["stages"]["residual_adds"] == 9
    for entry in plan["residual_adds"]:
        assert entry["add"] in section  # each Add is named (its tooltip)
    assert "9 &times; Conv+Add+ReLU fused INT8 kernel" in section and "<code>R5</code>" in section
    assert page.index('id="gates"') < page.index('id="blocks"') < page.index('id="latency"')


def test_block_picture_renders_in_headless_chromium(small_demo_build: Path, tmp_path: Path):
    chromium = require(CHROMIUM, "Chromium", "apt-get install chromium")
    shot = tmp_path / "blocks.png"
    # The picture's own section, with the page's head (its styles): a fragment scroll (#blocks) is not reliably
    # applied before headless Chromium takes its screenshot, and the page above the picture grew (intervals, gates).
    html = (small_demo_build / "report.html").read_text()
    start = html.index('<section id="blocks">')
    page = tmp_path / "blocks.html"
    page.write_text(
        html[: html.index("</head>") + len("</head>")] + "<body>" + html[start : html.index("</section>", start) + 10] + "</body></html>"
    )
    url = page.as_uri()
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,900",
            f"--screenshot={shot}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    from PIL import Image

    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.int16)

    def near(color: str) -> np.ndarray:
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        return (np.abs(px - rgb) <= 12).all(axis=2)

    rows_with = lambda mask: int(mask.any(axis=1).sum())  # noqa: E731
    # Drawn, not blank: INT8 boxes (blue) and Q/DQ diamonds (purple) on many screen rows, i.e. several blocks.
    assert px.std() > 10
    assert near(INT8).sum() > 2000 and rows_with(near(INT8)) > 60
    assert near(QDQ).sum() > 300 and rows_with(near(QDQ)) > 30
