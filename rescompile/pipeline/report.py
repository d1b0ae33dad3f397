"""The sections the pipeline adds to a :class:`~rescompile.validate.results.Report` (stages, calibration, engine).

The Report itself (with the shared :class:`~rescompile.validate.run.Measurement`, its JSON and
:meth:`~rescompile.validate.results.Report.from_dict`) lives in :mod:`rescompile.validate.results`,
below ``deploy/``; it is re-exported here. Gates and ``passed`` are filled by
:func:`rescompile.validate.gates.judge`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.validate.results import ModelSection, Report
from rescompile.validate.run import Measurement

__all__ = ["CalibrationSection", "EngineSection", "ModelSection", "Report", "StagesSection", "make_report", "write_report"]

if TYPE_CHECKING:
    import onnx

    from rescompile.data.holdout import DataChoice
    from rescompile.pipeline.stages import BiasCorrected, Calibrated, Engine, Equalized, Exported, Quantized, Simplified


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
        return self.engine.build.section(self.engine.target)


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
    from rescompile.validate.notes import latency_notes, power_notes

    all_notes = latency_notes(candidate, measurement.candidate) + power_notes(measurement.candidate) + list(notes or [])
    return Report(measurement, model, validation, all_notes, **sections)


def write_report(folder: Path, report: Report, config: Mapping[str, Any] | None = None) -> list[Path]:
    """report.json, report.md, junit.xml and report.html of ``report`` in ``folder``.

    ``config`` (a build's ``BuildConfig.to_dict()``) names why layers were kept in FP in report.html's block picture.
    """
    from rescompile.report.write import write_reports

    return write_reports(folder, report, config=config)
