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
    OPTIONAL_ARTIFACTS,
    RANGES,
    failed_path,
    open_build,
)
from rescompile.config import BuildConfig
from rescompile.errors import UsageError
from rescompile.io import sha256_file, write_json
from rescompile.pipeline import stages
from rescompile.pipeline.report import CalibrationSection, EngineSection, ModelSection, Report, StagesSection, make_report, write_report
from rescompile.pipeline.settings import BuildSettings, DataSettings, build_settings
from rescompile.pipeline.validator import BuildValidator, Validated
from rescompile.publish import check_out, staged
from rescompile.validate.gates import Verdict, engine_gates, judge

if TYPE_CHECKING:
    from rescompile.data.holdout import DataChoice

log = logging.getLogger("rescompile.pipeline")


@dataclass
class BuildResult:
    """What a build made: its folder, report.json's document (``report``) and the typed :class:`Report` (``typed``)."""

    out: Path
    report: dict[str, Any]
    manifest: dict[str, Any]
    passed: bool
    failures: list[str]
    typed: Report = field(repr=False)


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
        self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t0, 3)  # a stage run twice: the sum


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
            (``rescompile.build(model="resnet20", weights=Path("ckpt.pt"))``, flat keys or groups: ``BuildConfig.replace``).

    Returns:
        The BuildResult; ``passed`` is False when a gate failed (the CLI then exits 1).

    Raises:
        RescompileError subclasses for bad input (exit 2), missing dependencies (3),
        parity or verification failures (1). A missed gate raises GateFailed whose ``result``
        is the BuildResult of ``<out>.failed``.
    """
    from rescompile.validate.gates import check_label_gates

    cfg = (cfg or BuildConfig()).replace(**overrides)
    s = build_settings(cfg)  # every check that needs no work: exit 2 / 3 before any
    data = choose_data(s.data, s.model.spec)
    check_label_gates(s.gates, data)  # --max-top1-drop without labels: exit 2 before any work (and heavy imports)
    timer = Timer()
    with timer.stage("load"):
        loaded = stages.load(s.model, s.pre, data, s.recipe)
    out = s.out or Path("build") / loaded.model.name
    check_out(out)
    with staged(out) as folder:
        exported, simplified, equalized = _float_models(s, loaded, data, folder, timer)
        base = simplified if equalized is None else equalized  # the float model Q/DQ goes into
        with timer.stage("plan"):
            planned = stages.plan(base.model, s.plan).write(folder)
        with timer.stage("calibrate"):  # reuses the previous build's ranges/statistics when their key matches
            base_data = simplified.result.data if equalized is None else None  # the model serialized, when simplify kept it
            calibrated = stages.calibrate(base.model, planned, data.calibration, loaded.pre, s.calibrate, _previous_build(out), base_data)
            calibrated.write(folder)
        with timer.stage("quantize"):
            quantized = stages.quantize(base, planned, calibrated).write(folder)
        corrected = None
        if s.transform.bias_correction:
            corrected = _correct_biases(s, base, quantized, calibrated, loaded, folder, timer)
            quantized = corrected.quantized
        # The FP32 reference is the simplified model on ONNX Runtime, for every source: the export and simplify parity
        # checks proved it equal to the PyTorch module, and it runs 2-3x faster than PyTorch on a CPU (docs/build.md).
        validator = BuildValidator(simplified.model, base.model, data.val, loaded.pre, s.validator, simplified.result.data)
        if s.validator.fallback is not None:
            with timer.stage("fallback"):
                quantized = stages.fall_back(validator, base, quantized, calibrated).write(folder)
            if corrected is not None and quantized is not corrected.quantized:  # layers went back to FP: correct the final plan's
                corrected = _correct_biases(s, base, quantized, calibrated, loaded, folder, timer)
                quantized = corrected.quantized
        engine = None
        if s.engine is not None:
            with timer.stage("engine"):
                engine = stages.engine(folder / INT8_ONNX, s.engine, folder)
        with timer.stage("validate"):
            validated = validator.validate(quantized.model, other_s=sum(timer.stages.values()))
        section = StagesSection(exported, simplified, quantized, equalized, corrected)
        report = _build_report(s, loaded, data, validated, section, calibrated, engine)
        verdict = judge(report, s.gates, [] if engine is None else engine_gates(engine.build))
        write_report(folder, report, cfg.to_dict())  # report.json, report.md, junit.xml, report.html
        manifest = _manifest(
            cfg, s.data.layout, folder, data, quantized.plan.policy, engine is not None, loaded, calibrated, timer.stages, verdict
        )
        write_json(folder / MANIFEST, manifest)
        result = BuildResult(out, report.to_dict(), manifest, verdict.passed, verdict.failures, report)
        error = verdict.failure(
            f"\nthis build is in {failed_path(out)}/ (report and model); {out}/ keeps the previous passing build",
            result=replace(result, out=failed_path(out)),
            tried=[name for name in ("equalize", "auto_fallback") if cfg.flat(name)],
        )
        if error is not None:  # published to <out>.failed by staged(); <out> keeps the previous passing build
            raise error
    return result


def _float_models(
    s: BuildSettings, loaded: stages.Loaded, data: DataChoice, folder: Path, timer: Timer
) -> tuple[stages.Exported, stages.Simplified, stages.Equalized | None]:
    """Export, simplify and (with ``equalize``) equalize the model into ``folder``; the equalized one is None without it."""
    with timer.stage("export"):
        exported = stages.export(loaded.model, s.export).write(folder)
    with timer.stage("simplify"):
        simplified = stages.simplify(exported, loaded.model.input_shape).write(folder)
    equalized = None
    if s.transform.equalize:
        with timer.stage("equalize"):  # statistics and parity on the calibration inputs, never the validation split
            equalized = stages.equalize(simplified, data.calibration, loaded.pre, s.batch_size).write(folder)
    return exported, simplified, equalized


def _correct_biases(
    s: BuildSettings,
    base: stages.Simplified | stages.Equalized,
    quantized: stages.Quantized,
    calibrated: stages.Calibrated,
    loaded: stages.Loaded,
    folder: Path,
    timer: Timer,
) -> stages.BiasCorrected:
    """The bias-corrected ``quantized``, written to ``folder`` (timed as ``bias_correction``)."""
    with timer.stage("bias_correction"):
        return stages.correct_biases(base, quantized, calibrated, loaded.pre, s.batch_size).write(folder)


def _build_report(
    s: BuildSettings,
    loaded: stages.Loaded,
    data: DataChoice,
    validated: Validated,
    section: StagesSection,
    calibrated: stages.Calibrated,
    engine: stages.Engine | None,
) -> Report:
    """The build's typed report: the measurement, the stages, calibration, fall-back, layerwise and engine sections."""
    return make_report(
        validated.measurement,
        ModelSection(loaded.model.name, loaded.model.input_shape, loaded.model.num_classes),
        data,
        section.quantized.model,
        stages=section,
        calibration=CalibrationSection(calibrated, s.calibrate.settings.method, s.calibrate.settings.percentile),
        notes=None if validated.fallback is None else [validated.fallback.note()],
        warnings=calibrated.run.warnings,
        layerwise=validated.layerwise,
        fallback=None if validated.fallback is None else validated.fallback.record(),
        engine=None if engine is None else EngineSection(engine),
    )


def _manifest(
    cfg: BuildConfig,
    layout: str,
    folder: Path,
    data: DataChoice,
    policy: str,
    with_engine: bool,
    loaded: stages.Loaded,
    calibrated: stages.Calibrated,
    timings: dict[str, float],
    verdict: Verdict,
) -> dict[str, Any]:
    """``manifest.json``: every artifact's sha256, versions, the config, the data, timings and the gates' outcome."""
    names = ARTIFACTS + tuple(n for n in OPTIONAL_ARTIFACTS if (folder / n).is_file())
    names += ENGINE_ARTIFACTS if with_engine else ()
    return {
        "schema": MANIFEST_SCHEMA,
        "artifacts": {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in names},
        "versions": versions(),
        "config": cfg.to_dict(),
        "policy": policy,
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
