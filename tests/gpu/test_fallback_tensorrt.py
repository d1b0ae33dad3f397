"""The auto-fallback search ranked and judged on TensorRT engines (docs/fallback.md#ranking-on-what-runs).

Runs only where ``import tensorrt`` works and a CUDA GPU is visible (``pytest -m gpu``); skipped
everywhere else. Every candidate is a real engine built from its Q/DQ model; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt")

from rescompile.engine.device import find_gpu  # noqa: E402

_FOUND, _WHY = find_gpu(0)
if _FOUND is None:
    pytest.skip(f"no CUDA GPU: {_WHY}", allow_module_level=True)

from rescompile.calibrate import collect_stats, compute_ranges  # noqa: E402
from rescompile.config import Gates  # noqa: E402
from rescompile.pipeline.fallback import auto_fallback, tensorrt_runner_factory  # noqa: E402
from rescompile.pipeline.settings import FallbackSettings  # noqa: E402
from rescompile.quantize import insert_qdq, plan_qdq  # noqa: E402
from rescompile.runtime.runners import OnnxRuntimeRunner  # noqa: E402
from rescompile.validate.reference import ValidationInputs  # noqa: E402
from rescompile.validate.run import ValidateSettings, compute_reference  # noqa: E402

pytestmark = pytest.mark.gpu
BROKEN = "/blocks/blocks.0/relu/Relu_output_0"  # read by block 0's conv2 only


def test_the_search_ranks_and_judges_on_tensorrt_engines(tiny_onnx, tmp_path: Path) -> None:
    data = np.random.default_rng(5).standard_normal((40, 1, 16, 16)).astype(np.float32)
    plan = plan_qdq(tiny_onnx, "tensorrt")
    ranges = compute_ranges(collect_stats(tiny_onnx, plan.calibrated_tensors, [data]), "max")
    ranges[BROKEN] = replace(ranges[BROKEN], amax=ranges[BROKEN].amax * 100)
    int8 = insert_qdq(tiny_onnx, plan, ranges)
    inputs = ValidationInputs.from_arrays("tiny", data, None)
    settings = ValidateSettings(batch_size=16, latency=replace(ValidateSettings().latency, batches=(1,), runs=3, warmup=0))
    ref = compute_reference(OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32"), inputs, settings)
    factory = tensorrt_runner_factory(tmp_path / "engines", batches=(1, 16))
    fb = auto_fallback(
        tiny_onnx,
        int8,
        plan,
        ranges,
        ref,
        inputs,
        FallbackSettings(2, Gates(min_cosine=0.99), unit="block"),
        settings,
        runner_factory=factory,
    )
    assert fb.to_dict()["ranking"]["runner"] == "tensorrt-int8"
    assert len(list((tmp_path / "engines").glob("candidate*/model.plan"))) == fb.ranking_runs + fb.gate_runs - 1
    assert not fb.initial.gates_passed and fb.passed
    assert [s.unit.name for s in fb.steps if s.accepted] == ["/blocks/blocks.0/Add"]
