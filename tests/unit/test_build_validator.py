"""The build's validator: the FP32 ONNX reference on ONNX Runtime, whose session also times the FP32 baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest

import rescompile.runtime.sessions as sessions
from rescompile.config import LatencySettings
from rescompile.data.preprocess import Preprocess
from rescompile.data.sources import DataSource
from rescompile.pipeline.settings import ValidatorSettings
from rescompile.pipeline.validator import BuildValidator
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.validate.run import ValidateSettings
from tests.models import TINY_SHAPE

SETTINGS = ValidatorSettings(ValidateSettings(batch_size=8, latency=LatencySettings(batches=(1,), warmup=1, runs=3), threads=1))


def _source() -> DataSource:
    rng = np.random.default_rng(5)
    images = rng.standard_normal((12, *TINY_SHAPE)).astype(np.float32)
    return DataSource("tiny", 12, arrays=images, labels=rng.integers(0, 4, 12))


def _pre() -> Preprocess:
    return Preprocess("identity", TINY_SHAPE[1], None, (0.0,), (1.0,), TINY_SHAPE[0])


@pytest.fixture()
def sessions_made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the ONNX Runtime sessions made (the real ones: ``ort_session`` is wrapped, not replaced)."""
    made: list[int] = []
    real: Callable[..., Any] = sessions.ort_session

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sessions, "ort_session", counting)
    return made


def test_the_reference_session_times_the_fp32_baseline(tiny_onnx: onnx.ModelProto, quantize_tiny: Any, sessions_made: list[int]) -> None:
    int8 = quantize_tiny("tensorrt").model  # (its calibration makes a session the first time)
    before = len(sessions_made)
    validator = BuildValidator(tiny_onnx, tiny_onnx, _source(), _pre(), SETTINGS, tiny_onnx.SerializeToString())
    result = validator.validate(int8).measurement
    assert len(sessions_made) - before == 2  # one FP32 session (reference and baseline), one INT8
    assert result.reference == result.baseline == "onnxruntime-fp32" and result.samples == 12
    assert {(lat.runner, lat.batch) for lat in result.latency} == {("onnxruntime-fp32", 1), ("onnxruntime-int8", 1)}
    x, _ = next(iter(_source().batches(_pre(), 12)))  # the 12 inputs, preprocessed as the validator does
    assert np.array_equal(validator.reference.logits, OnnxRuntimeRunner(tiny_onnx, threads=1).infer(x))


def test_a_reference_other_than_the_fp32_model_gets_its_own_baseline(
    tiny_onnx: onnx.ModelProto, quantize_tiny: Any, sessions_made: list[int]
) -> None:
    int8 = quantize_tiny("tensorrt").model
    before = len(sessions_made)
    other = onnx.ModelProto.FromString(tiny_onnx.SerializeToString())  # as after --equalize: another FP32 model
    BuildValidator(other, tiny_onnx, _source(), _pre(), SETTINGS).validate(int8)
    assert len(sessions_made) - before == 3
