"""Write a report in every format CI reads: report.json, report.md, junit.xml, report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rescompile.io import write_json, write_text_atomic
from rescompile.validate.html import render_html
from rescompile.validate.junit import render_junit
from rescompile.validate.report import render_markdown

REPORT_FILES = ("report.json", "report.md", "junit.xml", "report.html")


def write_reports(folder: Path, report: dict[str, Any]) -> list[Path]:
    """Write the four report files into ``folder`` (each atomically); return their paths."""
    folder = Path(folder)
    write_json(folder / "report.json", report)
    write_text_atomic(folder / "report.md", render_markdown(report))
    write_text_atomic(folder / "junit.xml", render_junit(report))
    write_text_atomic(folder / "report.html", render_html(report))
    return [folder / name for name in REPORT_FILES]
