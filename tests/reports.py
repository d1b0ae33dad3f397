"""Reports the tests share: one with every optional section, rendered by the unit tests and by Chromium (integration)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from rescompile.config import Gates
from rescompile.data.holdout import DataChoice
from rescompile.data.sources import DataSource
from rescompile.pipeline.fallback import auto_fallback
from rescompile.pipeline.report import ModelSection, make_report
from rescompile.pipeline.settings import FallbackSettings
from rescompile.quantize import Policy
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.validate.gates import judge
from rescompile.validate.layerwise import layerwise_blame
from rescompile.validate.reference import ValidationInputs
from rescompile.validate.run import ValidateSettings, compute_reference, validate


def full_report(tiny_onnx: Any, tiny_data: np.ndarray, quantize_tiny: Callable[..., Any]) -> dict[str, Any]:
    """A report with every optional section: labels, two batch sizes, layerwise, fallback, passing and failing gates."""
    plan, ranges, int8 = (q := quantize_tiny(Policy.TENSORRT)).plan, q.ranges, q.model
    labels = np.arange(len(tiny_data)) % 4
    inputs = ValidationInputs.from_arrays("tiny", tiny_data, labels)
    settings = ValidateSettings(batch_size=8, latency=replace(ValidateSettings().latency, batches=(1, 4), runs=5, warmup=1))
    ref = compute_reference(OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32"), inputs, settings)
    measured = validate(
        ref,
        OnnxRuntimeRunner(int8, "onnxruntime-int8"),
        inputs,
        baseline=OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32"),
        settings=settings,
    )
    report = make_report(
        measured,
        ModelSection("tiny", (1, 16, 16), 4),
        DataChoice.validation_only("given", DataSource("tiny", len(tiny_data), labels=labels)),
        int8,
        layerwise=layerwise_blame(tiny_onnx, int8, tiny_data),
        fallback=auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(1, Gates(min_cosine=1.0)), settings).record(),
    )
    judge(report, Gates(min_agreement=50, min_cosine=1.0, max_p99_ms=1e9, latency_batch=4))
    return json.loads(json.dumps(report.to_dict()))  # exactly what report.json holds
