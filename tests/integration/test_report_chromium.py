"""report.html of a report with every optional section, rendered by headless Chromium (a subprocess: integration)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from rescompile.report.html import render_html
from rescompile.validate.results import Report
from tests import reports
from tests.tools import CHROMIUM, require


@pytest.fixture(scope="module")
def full_report(tiny_onnx, tiny_data, quantize_tiny):
    return reports.full_report(tiny_onnx, tiny_data, quantize_tiny)


def test_html_renders_in_headless_chromium(tmp_path, full_report):
    chromium = require(CHROMIUM, "Chromium", "apt-get install chromium")
    page = tmp_path / "report.html"
    page.write_text(render_html(Report.from_dict(full_report)))
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1000, 1400)
        px = np.asarray(im.convert("RGB"), dtype=np.int16)
    # Drawn, not blank: the FAILED badge (red) and both latency series (blue FP32, orange INT8) are on screen.
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    assert (px != 255).any(axis=2).mean() > 0.02
    red = (r > 170) & (g < 80) & (b < 80)
    blue = b - r > 30
    orange = (r - b > 60) & (g > 120)
    assert red.sum() > 200 and blue.sum() > 200 and orange.sum() > 200
