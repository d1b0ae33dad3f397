"""The validation stages of ``build``: the FP32 reference once, auto-fallback, then the INT8 model's measurement.

The reference is computed lazily and serves both auto-fallback (before the engine stage: the
engine is built from the final model) and the final validation with layerwise blame. After an
auto-fallback the final measurement, and so every gate, is taken on the search's gate split only:
the ranking split chose what to keep in FP, so its samples would flatter the result
(docs/fallback.md#no-selection-bias).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from rescompile.pipeline.fallback import Fallback, auto_fallback
from rescompile.pipeline.settings import ValidatorSettings, timed_for
from rescompile.runtime.runners import OnnxRuntimeRunner, Runner, TorchRunner
from rescompile.validate.reference import ReferenceOutputs, ValidationInputs, save_reference
from rescompile.validate.run import Measurement, compute_reference, validate

if TYPE_CHECKING:
    from rescompile.calibrate.ranges import TensorRange
    from rescompile.config import BuildConfig
    from rescompile.data.preprocess import Preprocess
    from rescompile.data.sources import DataSource
    from rescompile.quantize.policy import QuantPlan
    from rescompile.validate.layerwise import Layerwise


@dataclass
class Validated:
    """The INT8 model's measurement (:func:`rescompile.validate.run.validate`), its layerwise blame and auto-fallback."""

    measurement: Measurement
    layerwise: Layerwise | None = None
    fallback: Fallback | None = None

    def to_dict(self) -> dict[str, Any]:
        """The measurement's part of report.json, with ``layerwise`` and ``fallback`` when present."""
        d = self.measurement.to_dict()
        if self.layerwise is not None:
            d["layerwise"] = self.layerwise.to_dict()
        if self.fallback is not None:
            d["fallback"] = self.fallback.to_dict()
        return d


def reference_runner(reference: Any, threads: int | None, data: bytes | None = None) -> Runner:
    """The runner for an FP32 reference: a PyTorch module, or an FP32 ONNX model (``data``: it serialized)."""
    if isinstance(reference, onnx.ModelProto):
        return OnnxRuntimeRunner(reference if data is None else data, "onnxruntime-fp32", threads)
    return TorchRunner(reference, "pytorch-fp32", threads)


class BuildValidator:
    """FP32 reference (an FP32 ONNX model, or a PyTorch module) against INT8 candidates on ``source``.

    Args:
        reference: the FP32 ONNX model (``build``: the simplified model), or a PyTorch module.
        fp32_onnx: the FP32 simplified model (latency baseline on the same runtime; layerwise reference).
        source, pre: the validation data and its preprocessing.
        settings: batch size, latency, threads, layerwise, reference file, auto-fallback.
        reference_data: the ONNX reference serialized, when the caller has it (a large model is not serialized again).
    """

    def __init__(
        self,
        reference: Any,
        fp32_onnx: onnx.ModelProto,
        source: DataSource,
        pre: Preprocess,
        settings: ValidatorSettings,
        reference_data: bytes | None = None,
    ) -> None:
        self.settings = settings
        settings.validate.latency.check()
        self.fp32, self.pre = fp32_onnx, pre
        self.inputs = ValidationInputs.from_source(source, pre)
        self._reference_model, self._reference_data = reference, reference_data
        self._runner: Runner | None = None
        self._ref: ReferenceOutputs | None = None
        self.fallback_result: Fallback | None = None

    @property
    def reference(self) -> ReferenceOutputs:
        if self._ref is None:
            s = self.settings
            self._runner = reference_runner(self._reference_model, s.validate.threads, self._reference_data)
            self._ref = compute_reference(
                self._runner,
                self.inputs,
                s.validate,
                keep_inputs=s.save_reference is not None,
                meta={"preprocess": self.pre.to_dict(), "model": s.model_label},
            )
        return self._ref

    def fallback(self, int8: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, TensorRange]) -> Fallback:
        """Run auto-fallback; the result holds the final model and plan.

        Raises:
            UsageError: the settings ask for no auto-fallback.
        """
        fb = self.settings.fallback
        if fb is None:
            from rescompile.errors import UsageError

            raise UsageError("auto-fallback is off (limit 0)")
        self.fallback_result = auto_fallback(self.fp32, int8, plan, ranges, self.reference, self.inputs, fb, self.settings.validate)
        return self.fallback_result

    def measured_on(self) -> tuple[ReferenceOutputs, ValidationInputs]:
        """The reference and inputs the final measurement uses: the gate split after an auto-fallback, else all."""
        fb = self.fallback_result
        if fb is None:
            return self.reference, self.inputs
        gate = fb.split.gate
        return self.reference.select(gate), self.inputs.select(gate, f"{self.inputs.name} (auto-fallback gate split)")

    def _baseline(self, threads: int | None) -> Runner:
        """The FP32 ONNX runner timed beside the candidate: the reference's own session when the reference is that model."""
        if self._runner is not None and self._reference_model is self.fp32:
            return self._runner
        return OnnxRuntimeRunner(self.fp32, "onnxruntime-fp32", threads)

    def validate(self, int8: onnx.ModelProto, other_s: float = 0.0) -> Validated:
        """The measurement of ``int8`` against the reference; FP32 ONNX timed as the baseline.

        ``other_s``: seconds the build took so far (the default latency budget is a share of the whole).
        A candidate whose CPU latency is not representative (:func:`latency_notes`) is timed briefly.
        """
        from rescompile.validate.layerwise import layerwise_blame

        s = self.settings
        threads = s.validate.threads
        cand = OnnxRuntimeRunner(int8, "onnxruntime-int8", threads)
        settings = timed_for(s.validate, int8, cand.name)
        reference, inputs = self.measured_on()
        measured = validate(
            reference,
            cand,
            inputs,
            baseline=self._baseline(threads),
            settings=settings,
            other_s=other_s,
        )
        result = Validated(measured, fallback=self.fallback_result)
        if s.layerwise:
            t0 = time.perf_counter()
            result.layerwise = layerwise_blame(self.fp32, int8, inputs.head(s.validate.layerwise_samples))
            measured.timings["layerwise_s"] = round(time.perf_counter() - t0, 3)
        if s.save_reference is not None:
            save_reference(Path(s.save_reference), self.reference)
        return result


def validate_models(
    reference: Any,
    fp32_onnx: onnx.ModelProto,
    candidate: onnx.ModelProto,
    source: DataSource,
    pre: Preprocess,
    cfg: BuildConfig,
) -> Validated:
    """Accuracy, agreement and latency of ``candidate`` (INT8, ONNX Runtime) against ``reference``, as ``build`` measures.

    Returns the typed :class:`Validated` (``.measurement``: accuracy, agreement, per-class, latency;
    ``.to_dict()``: that part of report.json).

    Args:
        reference: the FP32 PyTorch module, or an FP32 ONNX model when there is none.
        fp32_onnx: the FP32 simplified ONNX model (latency baseline on the same runtime).
        candidate: the INT8 model.
        cfg: the build configuration (its validation options).
    """
    from rescompile.pipeline.settings import validator_settings

    return BuildValidator(reference, fp32_onnx, source, pre, validator_settings(cfg)).validate(candidate)
