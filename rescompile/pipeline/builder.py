"""``build``: the stages in order, then the report, its gates and the manifest.

The build is staged in a sibling temporary folder and published whole at the end by
:mod:`rescompile.publish` (a build that misses a gate goes to ``<out>.failed``); the folder
layout and the manifest's reader are :mod:`rescompile.buildfolder`.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.buildfolder import (
    ARTIFACTS,
    CALIB_STATS,
    ENGINE_ARTIFACTS,
    INT8_ONNX,
    MANIFEST,
    MANIFEST_SCHEMA,
    RANGES,
    failed_path,
    open_build,
)
from rescompile.config import BuildConfig
from rescompile.errors import UsageError
from rescompile.io import sha256_file, write_json
from rescompile.pipeline import stages
from rescompile.pipeline.report import CalibrationSection, EngineSection, ModelSection, Report, StagesSection, make_report, write_report
from rescompile.pipeline.settings import DataSettings, build_settings
from rescompile.pipeline.validator import BuildValidator
from rescompile.pipeline.verdict import Verdict, fusion_gate, judge
from rescompile.publish import check_out, staged

if TYPE_CHECKING:
    from rescompile.data.holdout import DataChoice

log = logging.getLogger("rescompile.pipeline")


@dataclass
class BuildResult:
    out: Path
    report: dict[str, Any]
    manifest: dict[str, Any]
    passed: bool
    failures: list[str] = field(default_factory=list)


def versions() -> dict[str, str]:
    import numpy as np
    import onnx
    import onnxruntime
    import onnxsim
    import torch

    from rescompile._version import __version__

    return {
        "rescompile": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _previous_build(out: Path) -> Path | None:
    """``out`` when it holds a build whose calibration files match its manifest (for cache reuse), else None."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        previous = open_build(out, allow_failed=True)
        for name in (RANGES, CALIB_STATS):
            if previous.has(name):
                previous.file(name)
    except UsageError as exc:
        log.info("not reusing calibration from %s: %s", out, exc.message)
        return None
    return out


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - t0, 3)


def choose_data(settings: DataSettings, model: str) -> DataChoice:
    """The calibration and validation data (no ``val``: demo-val for the demo model, else a held-out split of
    ``calib`` or, too small, in-sample); a DataChoice."""
    from rescompile.data.holdout import choose_data as choose

    data = choose(
        model,
        settings.calib,
        settings.val,
        layout=settings.layout,
        calib_size=settings.calib_size,
        val_size=settings.val_size,
        seed=settings.seed,
    )
    log.info("validation: %s", data.describe())
    return data


def build(cfg: BuildConfig | None = None, **overrides: Any) -> BuildResult:
    """Run every stage: load, export, simplify, plan, calibrate, quantize, verify, validate.

    Args:
        cfg: the build configuration; keyword ``overrides`` replace its fields
            (``rescompile.build(model="resnet20", weights=Path("ckpt.pt"))``).

    Returns:
        The BuildResult; ``passed`` is False when a gate failed (the CLI then exits 1).

    Raises:
        RescompileError subclasses for bad input (exit 2), missing dependencies (3),
        parity or verification failures (1). A missed gate raises GateFailed whose ``result``
        is the BuildResult of ``<out>.failed``.
    """
    from rescompile.data.holdout import check_label_gates

    cfg = replace(cfg or BuildConfig(), **overrides)
    s = build_settings(cfg)  # every check that needs no work: exit 2 / 3 before any
    data = choose_data(s.data, s.model.spec)
    check_label_gates(s.gates, data)  # --max-top1-drop without labels: exit 2 before any work (and heavy imports)
    timer = Timer()
    with timer.stage("load"):
        loaded = stages.load(s.model, s.pre, data)
    out = s.out or Path("build") / loaded.model.name
    check_out(out)
    with staged(out) as folder:
        with timer.stage("export"):
            exported = stages.export(loaded.model, s.export).write(folder)
        with timer.stage("simplify"):
            simplified = stages.simplify(exported, loaded.model.input_shape).write(folder)
        with timer.stage("plan"):
            planned = stages.plan(simplified.model, s.plan).write(folder)
        with timer.stage("calibrate"):  # reuses the previous build's ranges/statistics when their key matches
            calibrated = stages.calibrate(simplified.model, planned, data.calibration, loaded.pre, s.calibrate, _previous_build(out)).write(
                folder
            )
        with timer.stage("quantize"):
            quantized = stages.quantize(simplified, planned, calibrated).write(folder)
        module = loaded.model.module
        validator = BuildValidator(module if module is not None else simplified.model, simplified.model, data.val, loaded.pre, s.validator)
        if s.validator.fallback is not None:
            with timer.stage("fallback"):
                quantized = stages.fall_back(validator, simplified, quantized, calibrated).write(folder)
        engine = None
        if s.engine is not None:
            with timer.stage("engine"):
                engine = stages.engine(folder / INT8_ONNX, s.engine, folder)
        with timer.stage("validate"):
            validated = validator.validate(quantized.model, other_s=sum(timer.stages.values()))
        report = make_report(
            validated.measurement,
            ModelSection(loaded.model.name, loaded.model.input_shape, loaded.model.num_classes),
            data,
            quantized.model,
            stages=StagesSection(exported, simplified, quantized),
            calibration=CalibrationSection(calibrated, s.calibrate.method, s.calibrate.percentile),
            notes=None if validated.fallback is None else [validated.fallback.note()],
            warnings=calibrated.run.warnings,
            layerwise=validated.layerwise,
            fallback=validated.fallback,
            engine=None if engine is None else EngineSection(engine),
        )
        verdict = judge(report, s.gates, [] if engine is None else [fusion_gate(engine.build.fusion)])
        write_report(folder, report, cfg.to_dict())  # report.json, report.md, junit.xml, report.html
        manifest = _manifest(cfg, s.data.layout, folder, report, loaded, calibrated, timer.stages, verdict)
        write_json(folder / MANIFEST, manifest)
        error = verdict.failure(f"\nthis build is in {failed_path(out)}/ (report and model); {out}/ keeps the previous passing build")
        if error is not None:  # published to <out>.failed by staged(); <out> keeps the previous passing build
            error.result = BuildResult(failed_path(out), report.to_dict(), manifest, False, verdict.failures)  # type: ignore[attr-defined]
            raise error
    return BuildResult(out, report.to_dict(), manifest, True, [])


def _manifest(
    cfg: BuildConfig,
    layout: str,
    folder: Path,
    report: Report,
    loaded: stages.Loaded,
    calibrated: stages.Calibrated,
    timings: dict[str, float],
    verdict: Verdict,
) -> dict[str, Any]:
    """``manifest.json``: every artifact's sha256, versions, the config, the data, timings and the gates' outcome."""
    data = report.validation
    names = ARTIFACTS + (ENGINE_ARTIFACTS if report.engine is not None else ())
    return {
        "schema": MANIFEST_SCHEMA,
        "artifacts": {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in names},
        "versions": versions(),
        "config": cfg.to_dict(),
        "policy": report.stages.quantized.plan.policy if report.stages is not None else cfg.policy,
        "preprocess": loaded.pre.to_dict(),
        "model_source": loaded.model.source,
        "data": {
            "calibration": data.calibration.name,
            "validation": data.val.name,
            "calibration_sha256": calibrated.run.result.key["data_sha256"],
            "validation_choice": {**data.to_dict(), "layout": layout},
        },
        "timings_s": timings,
        "gates": {"passed": verdict.passed, "failed": verdict.failed_names},
    }
