"""Write a report in every format CI reads: report.json, report.md, junit.xml, report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rescompile.buildfolder import JUNIT_XML, REPORT_FILES, REPORT_HTML, REPORT_JSON, REPORT_MD
from rescompile.io import write_json, write_text_atomic
from rescompile.validate.html import render_html
from rescompile.validate.junit import render_junit
from rescompile.validate.report import render_markdown

__all__ = ["REPORT_FILES", "write_reports"]


def write_reports(folder: Path, report: dict[str, Any]) -> list[Path]:
    """Write the four report files into ``folder`` (each atomically); return their paths."""
    folder = Path(folder)
    write_json(folder / REPORT_JSON, report)
    write_text_atomic(folder / REPORT_MD, render_markdown(report))
    write_text_atomic(folder / JUNIT_XML, render_junit(report))
    write_text_atomic(folder / REPORT_HTML, render_html(report))
    return [folder / name for name in REPORT_FILES]
