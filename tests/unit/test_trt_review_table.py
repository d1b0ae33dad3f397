"""docs/tensorrt.md's table of review items D1-D18 names tests that exist (a renamed test would leave it lying)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_every_d_item_has_a_row_and_every_named_test_exists() -> None:
    doc = (REPO / "docs" / "tensorrt.md").read_text()
    table = doc[doc.index("## Review 2026-12-06: D1-D18") :]
    rows = [ln for ln in table.splitlines() if re.match(r"\| D\d+ ", ln)]
    assert [int(re.match(r"\| D(\d+)", r).group(1)) for r in rows] == list(range(1, 19))  # type: ignore[union-attr]
    sources = {p.name: p.read_text() for p in [*(REPO / "tests" / "unit").glob("test_*.py"), *(REPO / "tests" / "gpu").glob("test_*.py")]}
    everything = "\n".join(sources.values())
    named = 0
    for row in rows:
        current = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)`", row):
            current = file or current
            text = sources[current] if current else everything
            assert f"def {name}(" in text, (row[:20], current, name)
            named += 1
        for name in re.findall(r"tests/gpu::(test_\w+)", row):
            assert f"def {name}(" in everything, name
    assert named >= 25
