"""The report of ``build`` and ``validate`` as one typed value; :meth:`Report.to_dict` is ``report.json``.

``report.json`` follows ``rescompile/schemas/report.schema.json``. The measurement (accuracy,
agreement, per-class, latency: :func:`rescompile.validate.run.validate`) is the part both
commands share; each section the pipeline adds is a typed field, serialized only when present.
Gates and ``passed`` are filled by :func:`rescompile.pipeline.verdict.judge`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.validate.gates import GateResult
from rescompile.validate.run import Measurement

if TYPE_CHECKING:
    import onnx

    from rescompile.calibrate.checks import CalibrationWarning
    from rescompile.data.holdout import DataChoice
    from rescompile.pipeline.fallback import Fallback
    from rescompile.pipeline.stages import BiasCorrected, Calibrated, Engine, Equalized, Exported, Quantized, Simplified
    from rescompile.validate.layerwise import Layerwise


@dataclass
class ModelSection:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    reference: str | None = None  # validate: the FP32 reference as given

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.reference is not None:
            d["reference"] = self.reference
        return d | {"input_shape": list(self.input_shape), "num_classes": self.num_classes}


@dataclass
class StagesSection:
    """What export, simplify, equalize, plan, quantize and bias correction did (build only)."""

    exported: Exported
    simplified: Simplified
    quantized: Quantized
    equalized: Equalized | None = None  # --equalize
    bias_corrected: BiasCorrected | None = None  # --bias-correction

    def to_dict(self) -> dict[str, Any]:
        simp, plan = self.simplified.result, self.quantized.plan
        d: dict[str, Any] = {
            "export_max_abs_error": self.exported.max_abs_error,
            "simplify_max_abs_error": simp.max_abs_error,
            "nodes_before_simplify": simp.nodes_before,
            "nodes_after_simplify": simp.nodes_after,
            "batchnorms_folded": simp.batchnorms_folded,
            "residual_adds": len(plan.residual_adds),
            "qdq_activations": len(plan.activations),
            "qdq_weights": len(plan.weights),
            "verify": self.quantized.proof.to_dict(),
            "policy": plan.policy,
            "qdq_biases": len(plan.biases),
            "kept_fp": plan.kept_fp,
        }
        if self.exported.opset_conversion is not None:
            d["opset_conversion"] = self.exported.opset_conversion.to_dict()
        if self.exported.batch_made_dynamic is not None:
            d["batch_made_dynamic"] = self.exported.batch_made_dynamic.to_dict()
        if self.equalized is not None:
            d["equalize"] = self.equalized.result.to_dict()
        if self.bias_corrected is not None:
            d["bias_correction"] = self.bias_corrected.correction.to_dict()
        return d


@dataclass
class CalibrationSection:
    """How the ranges were found (build only)."""

    calibrated: Calibrated
    method: str
    percentile: float

    def to_dict(self) -> dict[str, Any]:
        run, result = self.calibrated.run, self.calibrated.run.result
        chosen = dict(sorted(Counter(r.method for r in result.ranges.values()).items()))
        return {
            "method": self.method,
            "samples": result.samples,
            "source": self.calibrated.source.name,
            "percentile": self.percentile,
            "reused": run.reused,
            "methods_chosen": chosen,
        }


@dataclass
class EngineSection:
    """The TensorRT engine the build made (``backend="tensorrt"``)."""

    engine: Engine

    def to_dict(self) -> dict[str, Any]:
        b = self.engine.build
        return {
            "tensorrt_version": b.tensorrt_version,
            "gpu": b.device.to_dict(),
            "target": self.engine.target,
            "settings": b.settings.to_dict(),
            "residual_fusion": b.fusion.to_dict(),
            "build_seconds": b.build_seconds,
        }


@dataclass
class Report:
    """``report.json`` of ``build`` or ``validate``.

    ``measurement`` is what :func:`rescompile.validate.run.validate` measured (source, samples, runners,
    accuracy, agreement, per-class, latency, speedup, memory, settings, timings, scale).
    """

    measurement: Measurement
    model: ModelSection
    validation: DataChoice
    notes: list[str] = field(default_factory=list)
    stages: StagesSection | None = None
    calibration: CalibrationSection | None = None
    warnings: list[CalibrationWarning] | None = None  # build: findings about the calibration data (maybe none)
    layerwise: Layerwise | None = None
    fallback: Fallback | None = None
    engine: EngineSection | None = None
    build: dict[str, Any] | None = None  # validate of a build folder: BuildFolder.record()
    gates: list[GateResult] = field(default_factory=list)
    passed: bool | None = None  # set by judge()

    @property
    def candidate(self) -> str:
        return self.measurement.candidate

    @property
    def samples(self) -> int:
        return self.measurement.samples

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``rescompile.report/1``)."""
        d = self.measurement.to_dict()
        d["model"] = self.model.to_dict()
        d["validation"] = self.validation.to_dict()
        sections: dict[str, Any] = {
            "stages": self.stages,
            "calibration": self.calibration,
            "layerwise": self.layerwise,
            "fallback": self.fallback,
            "engine": self.engine,
        }
        d.update({k: v.to_dict() for k, v in sections.items() if v is not None})
        if self.notes:
            d["notes"] = list(self.notes)
        if self.warnings is not None:
            d["warnings"] = [w.to_dict() for w in self.warnings]
        if self.build is not None:
            d["build"] = self.build
        d["gates"] = [g.to_dict() for g in self.gates]
        d["passed"] = self.passed if self.passed is not None else all(g.passed for g in self.gates)
        return d


def make_report(
    measurement: Measurement,
    model: ModelSection,
    validation: DataChoice,
    candidate: onnx.ModelProto | None,
    *,
    notes: list[str] | None = None,
    **sections: Any,
) -> Report:
    """The report of a measurement: the notes on what its numbers mean (:func:`latency_notes` of the
    candidate, then ``notes``) and the given sections (``stages``, ``calibration``, ``layerwise``, ...)."""
    from rescompile.validate.notes import latency_notes

    all_notes = latency_notes(candidate, measurement.candidate) + list(notes or [])
    return Report(measurement, model, validation, all_notes, **sections)


def write_report(folder: Path, report: Report, config: Mapping[str, Any] | None = None) -> list[Path]:
    """report.json, report.md, junit.xml and report.html of ``report`` in ``folder``.

    ``config`` (a build's ``BuildConfig.to_dict()``) names why layers were kept in FP in report.html's block picture.
    """
    from rescompile.validate.write import write_reports

    return write_reports(folder, report.to_dict(), config=config)
