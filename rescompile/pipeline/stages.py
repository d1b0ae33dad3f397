"""The build's stages as functions: each takes its own small settings and returns a typed result.

A result's ``write(folder)`` saves the stage's artifacts under the names of
:mod:`rescompile.buildfolder` and returns the result, so :func:`rescompile.pipeline.build`
reads as the sequence of stages. Every stage is usable alone from Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rescompile.buildfolder import BIAS_CORRECTION, CALIB_STATS, EQUALIZED_ONNX, FP32_ONNX, INT8_ONNX, QDQ_PLAN, RANGES, SIMPLIFIED_ONNX
from rescompile.errors import VerificationError
from rescompile.io import save_onnx, write_bytes_atomic, write_text_atomic
from rescompile.pipeline.settings import CalibrateStage, EngineStageSettings, ModelSpec, PlanSettings, PreprocessSettings

if TYPE_CHECKING:
    from rescompile.bias_correction import BiasCorrection
    from rescompile.calibrate.ranges import TensorRange
    from rescompile.calibrate.run import CalibrationRun
    from rescompile.data.holdout import DataChoice
    from rescompile.data.preprocess import Preprocess
    from rescompile.data.sources import DataSource
    from rescompile.engine.tensorrt import EngineBuild
    from rescompile.equalize import EqualizeResult
    from rescompile.export import ExportConfig
    from rescompile.graph.verify import VerifyReport
    from rescompile.models.loader import LoadedModel
    from rescompile.models.onnx_source import BatchFreed, OpsetConversion
    from rescompile.pipeline.validator import BuildValidator
    from rescompile.quantize.policy import QuantPlan
    from rescompile.simplify import SimplifyConfig, SimplifyResult

MAX_VIOLATIONS_SHOWN = 10


@dataclass
class Loaded:
    """The model (a PyTorch module, or an ONNX file) and the preprocessing its data gets."""

    model: LoadedModel
    pre: Preprocess


def preprocessing(
    preset: str, input_shape: tuple[int, int, int], pre: PreprocessSettings, recipe: dict[str, Any] | None = None
) -> Preprocess:
    """The preprocessing of a model whose own preset is ``preset``: ``pre``'s preset, recipe and values over it
    (:func:`rescompile.data.preprocess.resolve_preprocess`); ``recipe``: ``pre.recipe``'s values if already read.

    Raises:
        UsageError: an unreadable recipe, an unknown preset, values that do not fit the model's input.
    """
    from rescompile.data.preprocess import load_recipe, resolve_preprocess

    if recipe is None:
        recipe = load_recipe(pre.recipe) if pre.recipe is not None else {}
    return resolve_preprocess(
        preset,
        input_shape,
        preset=pre.preset,
        recipe=recipe,
        size=pre.size,
        resize=pre.resize,
        mean=pre.mean,
        std=pre.std,
        channels=pre.channels,
        channel_order=pre.channel_order,
    )


def load(spec: ModelSpec, pre: PreprocessSettings, data: DataChoice, recipe: dict[str, Any] | None = None) -> Loaded:
    """Load the model, resolve its preprocessing, and check that both data sets fit its input.

    Raises:
        UsageError: unknown model, unreadable checkpoint, bad preprocessing, data of the wrong shape.
    """
    from rescompile.data.sources import check_shape
    from rescompile.models import load_model

    loaded = load_model(spec.spec, **spec.load_kwargs())
    resolved = preprocessing(loaded.preset, loaded.input_shape, pre, recipe)
    for src in (data.calibration, data.val):
        check_shape(src, resolved, loaded.input_shape)
    return Loaded(loaded, resolved)


@dataclass
class Exported:
    """The FP32 ONNX model: exported from PyTorch (parity-checked), or an ONNX source made usable."""

    model: onnx.ModelProto
    max_abs_error: float | None  # export parity against PyTorch; None for an ONNX source
    opset_conversion: OpsetConversion | None = None
    batch_made_dynamic: BatchFreed | None = None
    probe: tuple[np.ndarray, np.ndarray] | None = None  # the export parity's inputs and ONNX Runtime outputs (simplify's reference)

    def write(self, folder: Path) -> Exported:
        save_onnx(folder / FP32_ONNX, self.model)
        return self


def export(loaded: LoadedModel, cfg: ExportConfig) -> Exported:
    """PyTorch -> ONNX with a parity check; an ONNX source below opset 13 is converted and a fixed batch
    made dynamic, each parity-checked on ONNX Runtime or refused (exit 2)."""
    if loaded.module is not None:
        from rescompile.export import export_onnx

        model, parity = export_onnx(loaded.module, loaded.input_shape, cfg)
        return Exported(model, parity.max_abs_error, probe=parity.probe)
    from rescompile.models.onnx_source import free_batch, upgrade_opset
    from rescompile.readers import read_onnx

    if loaded.onnx_path is None:
        raise ValueError(f"{loaded.name}: neither a module nor an ONNX file")
    read, loaded.onnx_model = loaded.onnx_model, None  # read once (when the model was described); not kept past export
    model, conversion = upgrade_opset(read if read is not None else read_onnx(loaded.onnx_path), loaded.onnx_path, loaded.input_shape)
    model, freed = free_batch(model, loaded.onnx_path, loaded.input_shape)
    return Exported(model, None, conversion, freed)


@dataclass
class Simplified:
    result: SimplifyResult

    @property
    def model(self) -> onnx.ModelProto:
        return self.result.model

    def write(self, folder: Path) -> Simplified:
        if self.result.data is None:
            save_onnx(folder / SIMPLIFIED_ONNX, self.result.model)
        else:  # the bytes simplify checked, the same as save_onnx's
            write_bytes_atomic(folder / SIMPLIFIED_ONNX, self.result.data)
        return self


def simplify(exported: Exported, input_shape: tuple[int, int, int], cfg: SimplifyConfig | None = None) -> Simplified:
    """onnxsim and BatchNorm folding, parity-checked (:func:`rescompile.simplify.simplify`)."""
    from rescompile.simplify import SimplifyConfig
    from rescompile.simplify import simplify as run_simplify

    return Simplified(run_simplify(exported.model, input_shape, cfg or SimplifyConfig(), exported.probe))


def _calibration_batches(source: DataSource, pre: Preprocess, batch_size: int) -> Callable[[], Iterator[np.ndarray]]:
    """A fresh pass over the calibration inputs per call (the statistics of equalize and bias correction)."""
    return lambda: (x for x, _ in source.batches(pre, batch_size))


@dataclass
class Equalized:
    """The simplified model after cross-layer equalization and bias absorption (``--equalize``), parity-checked."""

    result: EqualizeResult

    @property
    def model(self) -> onnx.ModelProto:
        return self.result.model

    def write(self, folder: Path) -> Equalized:
        save_onnx(folder / EQUALIZED_ONNX, self.result.model)
        return self


def equalize(simplified: Simplified, source: DataSource, pre: Preprocess, batch_size: int = 64) -> Equalized:
    """Cross-layer equalization on the simplified graph, biases absorbed where exact, statistics and parity on the
    calibration inputs (:func:`rescompile.equalize.equalize_model`).

    Raises:
        ParityError: the equalized model's outputs moved beyond tolerance (exit 1).
    """
    from rescompile.equalize import equalize_model

    return Equalized(equalize_model(simplified.model, _calibration_batches(source, pre, batch_size)))


@dataclass
class Planned:
    plan: QuantPlan

    def write(self, folder: Path) -> Planned:
        write_text_atomic(folder / QDQ_PLAN, self.plan.to_json())
        return self


def plan(model: onnx.ModelProto, settings: PlanSettings) -> Planned:
    """Where Q/DQ goes, by the placement policy (``qdq_plan.json``)."""
    from rescompile.quantize import plan_qdq

    return Planned(plan_qdq(model, settings.policy, keep_fp=settings.keep_fp, keep_first_last=settings.keep_first_last))


@dataclass
class Calibrated:
    run: CalibrationRun
    source: DataSource

    @property
    def ranges(self) -> dict[str, TensorRange]:
        return self.run.result.ranges

    def write(self, folder: Path) -> Calibrated:
        write_text_atomic(folder / RANGES, self.run.ranges_json)
        write_bytes_atomic(folder / CALIB_STATS, self.run.stats_npz)
        return self


def calibrate(
    model: onnx.ModelProto,
    planned: Planned,
    source: DataSource,
    pre: Preprocess,
    settings: CalibrateStage,
    previous: Path | None = None,
    model_bytes: bytes | None = None,
) -> Calibrated:
    """Ranges of the plan's tensors on ``source``; ``previous``: a build folder whose ranges/statistics are reused
    when their key (model, data, preprocessing) matches; ``model_bytes``: ``model`` serialized deterministically."""
    return Calibrated(calibrate_tensors(model, planned.plan.calibrated_tensors, source, pre, settings, previous, model_bytes), source)


def calibrate_tensors(
    model: onnx.ModelProto,
    tensors: list[str],
    source: DataSource,
    pre: Preprocess,
    settings: CalibrateStage,
    previous: Path | None = None,
    model_bytes: bytes | None = None,
) -> CalibrationRun:
    """The calibration run of ``tensors`` (the build's: a plan's; ``rescompile calibrate``'s: a plan's or every activation)."""
    from rescompile.calibrate.run import calibrate as run_calibrate
    from rescompile.progress import progress

    with progress("calibrate", source.count, settings.progress) as advance:
        return run_calibrate(
            model,
            tensors,
            source,
            pre,
            method=settings.settings.method,
            percentile=settings.settings.percentile,
            collect=settings.collect,
            previous=previous,
            on_batch=advance,
            ray=settings.ray,
            model_bytes=model_bytes,
        )


@dataclass
class Quantized:
    """The INT8 Q/DQ model, its plan, and the proof that it keeps the FP32 topology as the policy says."""

    model: onnx.ModelProto
    plan: QuantPlan
    proof: VerifyReport

    def write(self, folder: Path) -> Quantized:
        save_onnx(folder / INT8_ONNX, self.model)
        write_text_atomic(folder / QDQ_PLAN, self.plan.to_json())
        return self


def proof_error(proof: VerifyReport, what: str = "the INT8 graph") -> VerificationError | None:
    """The error a failed proof is (exit 1; the first violations named), or None when it holds: the one place a proof
    becomes an error (build, ``rescompile quantize``, ``rescompile inspect``)."""
    if proof.ok:
        return None
    shown = "\n  ".join(str(v) for v in proof.violations[:MAX_VIOLATIONS_SHOWN])
    more = len(proof.violations) - MAX_VIOLATIONS_SHOWN
    return VerificationError(
        f"{what} breaks {len(proof.violations)} placement rule(s) of the {proof.policy} policy:\n  {shown}"
        + (f"\n  ... and {more} more" if more > 0 else "")
    )


def proven(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: QuantPlan, what: str = "the INT8 graph") -> Quantized:
    """``int8`` with its proof (:func:`rescompile.quantize.verify.verify_int8`).

    Raises:
        VerificationError: the INT8 graph breaks the placement rules (exit 1).
    """
    from rescompile.quantize.verify import verify_int8

    proof = verify_int8(fp32, int8, plan)
    error = proof_error(proof, what)
    if error is not None:
        raise error
    return Quantized(int8, plan, proof)


def quantize(simplified: Simplified | Equalized, planned: Planned, calibrated: Calibrated) -> Quantized:
    """Insert Q/DQ as planned, scales from the calibrated ranges; then prove the result."""
    from rescompile.quantize import insert_qdq

    return proven(simplified.model, insert_qdq(simplified.model, planned.plan, calibrated.ranges), planned.plan)


@dataclass
class Engine:
    """The TensorRT plan written for ``target``; ``build.fusion`` is the engine's fusion report (data, not a gate)."""

    build: EngineBuild
    target: str


def engine(int8_path: Path, settings: EngineStageSettings, folder: Path) -> Engine:
    """The TensorRT plan of ``int8_path`` for the target, with the engine's fusion report (on a GPU only)."""
    from rescompile.engine.tensorrt import build_for_pipeline

    return Engine(build_for_pipeline(int8_path, settings.target, settings.batches, folder), settings.target.name)


def fall_back(validator: BuildValidator, simplified: Simplified | Equalized, quantized: Quantized, calibrated: Calibrated) -> Quantized:
    """Auto-fallback (before the engine stage: the engine is built from the final model): keep units in FP until the
    accuracy gates pass on the gate split; the final model, proven again (the search's record: ``validator.fallback_result``)."""
    fallback = validator.fallback(quantized.model, quantized.plan, calibrated.ranges)
    if not fallback.accepted:
        return quantized
    return proven(simplified.model, fallback.model, fallback.plan, "the INT8 graph after auto-fallback")


@dataclass
class BiasCorrected:
    """``--bias-correction``: the INT8 model with corrected biases (same plan, same ranges) and every layer's shift."""

    correction: BiasCorrection
    quantized: Quantized

    def write(self, folder: Path) -> BiasCorrected:
        self.quantized.write(folder)
        write_text_atomic(folder / BIAS_CORRECTION, self.correction.to_json())
        return self


def correct_biases(
    fp32: Simplified | Equalized, quantized: Quantized, calibrated: Calibrated, pre: Preprocess, batch_size: int = 64
) -> BiasCorrected:
    """Empirical bias correction of ``quantized``, layer by layer on the calibration inputs
    (:func:`rescompile.bias_correction.correct_biases`); the result proven like the plain INT8 graph."""
    from rescompile.bias_correction import correct_biases as run

    batches = _calibration_batches(calibrated.source, pre, batch_size)
    correction = run(fp32.model, quantized.plan, calibrated.ranges, batches)
    return BiasCorrected(correction, proven(correction.model, correction.int8, quantized.plan, "the bias-corrected INT8 graph"))
