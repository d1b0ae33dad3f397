"""Write a report in every format CI reads: report.json, report.md, junit.xml, report.html.

report.html's block picture is drawn from the build's own files (model.int8.onnx, qdq_plan.json
and, on a GPU build, model.plan.layers.json): those of the folder being written, or of the build
folder the report names (``rescompile validate <build>``). The report itself does not change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.buildfolder import (
    INT8_ONNX,
    JUNIT_XML,
    MANIFEST,
    PLAN_LAYERS,
    PLAN_SIDECAR,
    QDQ_PLAN,
    REPORT_FILES,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
)
from rescompile.io import write_json, write_text_atomic
from rescompile.report.html import render_html
from rescompile.report.junit import render_junit
from rescompile.report.markdown import render_markdown

if TYPE_CHECKING:
    from rescompile.report.blocks import BlockPicture
    from rescompile.validate.results import Report

__all__ = ["REPORT_FILES", "fallback_layers", "read_block_picture", "recorded_build", "write_reports"]
log = logging.getLogger(__name__)


def _build_folder(folder: Path, recorded: Path | None) -> Path | None:
    """Where the build's INT8 model and plan are: ``folder``, else the build folder the report records."""
    for cand in (folder, recorded):
        if cand is not None and all((cand / n).is_file() for n in (INT8_ONNX, QDQ_PLAN)):
            return cand
    return None


def fallback_layers(report: Report) -> list[str]:
    """The nodes auto-fallback kept in FP, in order (the units of the report's accepted ``fallback`` steps)."""
    return [] if report.fallback is None else [n for s in report.fallback.accepted for n in s.unit.nodes]


def recorded_build(report: Report) -> Path | None:
    """The build folder a ``validate`` report records (``build.folder``), if any."""
    folder = (report.build or {}).get("folder")
    return Path(folder) if isinstance(folder, str) else None


def read_block_picture(
    folder: Path,
    *,
    recorded: Path | None = None,
    fallback: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
) -> BlockPicture | None:
    """The block picture of the build behind a report (a ``BlockPicture``), or None when its files are not there.

    Args:
        folder: the folder the report is written to.
        recorded: the build folder the report records (:func:`recorded_build`), read when ``folder`` holds no build.
        fallback: the nodes of the units auto-fallback kept in FP (:func:`fallback_layers`).
        config: the build's config (``keep_fp``, ``keep_first_last``); default: the build's manifest.json.
    """
    import onnx
    from google.protobuf.message import DecodeError

    from rescompile.report.blocks import describe_blocks, engine_layers, kept_reasons, stage_changes

    src = _build_folder(Path(folder), recorded)
    if src is None:
        return None
    try:
        int8 = onnx.load(str(src / INT8_ONNX), load_external_data=False)
        plan = json.loads((src / QDQ_PLAN).read_text())
        if config is None and (src / MANIFEST).is_file():
            config = json.loads((src / MANIFEST).read_text()).get("config")
        config = config if isinstance(config, Mapping) else {}
        why = kept_reasons(
            int8,
            plan.get("kept_fp") or [],
            keep_fp=tuple(config.get("keep_fp") or ()),
            keep_first_last=bool(config.get("keep_first_last")),
            fallback=list(fallback),
        )
        engine = None
        if (src / PLAN_LAYERS).is_file():
            sidecar = src / PLAN_SIDECAR
            settings = json.loads(sidecar.read_text()).get("settings", {}) if sidecar.is_file() else {}
            engine = engine_layers((src / PLAN_LAYERS).read_text(), int8, dla=settings.get("dla_core") is not None)
        # the build's own report.json (written before the page) says what its stages changed
        changed = stage_changes(json.loads((src / REPORT_JSON).read_text())) if (src / REPORT_JSON).is_file() else {}
        return describe_blocks(int8, plan, kept_why=why, engine=engine, changed=changed)
    except (OSError, ValueError, KeyError, AttributeError, DecodeError) as err:  # a damaged side file: the report is still written
        log.warning("report.html: no block picture (%s: %s)", type(err).__name__, err)
        return None


def write_reports(folder: Path, report: Report, *, config: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the four report files into ``folder`` (each atomically); return their paths.

    Args:
        folder: the output folder.
        report: the report.
        config: the build's config, for the reasons layers were kept in FP in the block picture.
    """
    folder = Path(folder)
    write_json(folder / REPORT_JSON, report.to_dict())
    write_text_atomic(folder / REPORT_MD, render_markdown(report))
    junit = render_junit(report.measurement, report.gates, model=report.model.name, validation=report.validation)
    write_text_atomic(folder / JUNIT_XML, junit)
    write_text_atomic(
        folder / REPORT_HTML,
        render_html(report, read_block_picture(folder, recorded=recorded_build(report), fallback=fallback_layers(report), config=config)),
    )
    return [folder / name for name in REPORT_FILES]
