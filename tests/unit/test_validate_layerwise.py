"""Layerwise blame finds a deliberately broken scale; auto-fallback keeps that layer in FP and passes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.pipeline.fallback import auto_fallback, weighted_macs
from rescompile.pipeline.settings import FallbackSettings
from rescompile.quantize import Policy, insert_qdq
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.validate.layerwise import keep_fp_pattern, layerwise_blame, qdq_views
from rescompile.validate.reference import ValidationInputs
from rescompile.validate.run import ValidateSettings, compute_reference

# The input of block 0's second conv: one Q/DQ pair read by exactly one node.
BROKEN = "/blocks/blocks.0/relu/Relu_output_0"
BLAMED = "/blocks/blocks.0/conv2/Conv"


@pytest.fixture(scope="module")
def quantized(quantize_tiny):
    q = quantize_tiny(Policy.TENSORRT)
    return q.plan, q.ranges, q.model


def break_scale(model: onnx.ModelProto, tensor: str, factor: float = 100.0) -> onnx.ModelProto:
    """A copy of ``model`` whose activation scale for ``tensor`` is multiplied by ``factor``."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    (init,) = [t for t in out.graph.initializer if t.name == f"{tensor}_scale"]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    return out


def test_broken_tensor_is_read_by_exactly_the_blamed_layer(quantized):
    plan, _, _ = quantized
    assert plan.activation(BROKEN).consumers == [f"{BLAMED}:0"]


def test_healthy_int8_has_small_errors_and_no_suggestion(tiny_onnx, tiny_data, quantized):
    _, _, int8 = quantized
    lw = layerwise_blame(tiny_onnx, int8, tiny_data)
    assert lw.samples == len(tiny_data)
    assert {lay.op for lay in lw.layers} == {"Conv", "Add", "Gemm"}
    assert max(lay.output_rel_error for lay in lw.layers) < 0.05
    assert lw.suggested_keep_fp == []
    views = {t.tensor: t.view for t in lw.tensors if t.quantized}
    assert views == qdq_views(int8) and views[BROKEN] == f"{BROKEN}_dequantized"


def test_scale_times_100_is_blamed_on_its_layer(tiny_onnx, tiny_data, quantized):
    _, _, int8 = quantized
    lw = layerwise_blame(tiny_onnx, break_scale(int8, BROKEN), tiny_data)
    assert lw.ranking[0] == BLAMED
    worst = lw.layer(BLAMED)
    assert worst.quantized_inputs == [BROKEN] and worst.jump > 0.2
    assert all(lay.jump < worst.jump / 5 for lay in lw.layers if lay.node != BLAMED)
    assert lw.suggested_keep_fp == [keep_fp_pattern(BLAMED)]
    quantized_view = next(t for t in lw.tensors if t.tensor == BROKEN and t.quantized)
    assert quantized_view.rel_error > 0.5  # the Q/DQ output itself is wrecked


def test_keep_fp_pattern_matches_only_its_node():
    import fnmatch

    name = "/layer[1]/conv*"
    pattern = keep_fp_pattern(name)
    assert fnmatch.fnmatchcase(name, pattern) and not fnmatch.fnmatchcase("/layer1/conv2", pattern)


def test_layerwise_refuses_unrelated_graphs(tiny_onnx, tiny_data):
    with pytest.raises(UsageError, match="no Q/DQ"):
        layerwise_blame(tiny_onnx, tiny_onnx, tiny_data)


def test_auto_fallback_keeps_the_broken_layer_and_passes(tiny_onnx, tiny_data, quantized):
    plan, ranges, _ = quantized
    broken_ranges = dict(ranges)
    broken_ranges[BROKEN] = replace(ranges[BROKEN], amax=ranges[BROKEN].amax * 100)  # scale x100 via its range
    broken = insert_qdq(tiny_onnx, plan, broken_ranges)
    inputs = ValidationInputs.from_arrays("tiny", tiny_data, None)
    settings = ValidateSettings(latency=replace(ValidateSettings().latency, batches=(1,), runs=3, warmup=0))
    ref = compute_reference(OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32"), inputs, settings)
    fb = auto_fallback(tiny_onnx, broken, plan, broken_ranges, ref, inputs, FallbackSettings(3, Gates(min_cosine=0.999)), settings)
    assert not fb.initial.gates_passed and fb.initial.failed_gates[0].startswith("FAIL min-cosine")
    assert fb.passed and [s.layer for s in fb.steps] == [BLAMED] and fb.kept == [keep_fp_pattern(BLAMED)]
    step = fb.steps[0]
    macs = weighted_macs(tiny_onnx)
    assert step.cost_macs_share == pytest.approx(macs[BLAMED] / sum(macs.values()))
    assert step.after.cosine_mean > 0.999 > fb.initial.cosine_mean
    assert BLAMED in fb.plan.kept_fp and BROKEN not in {a.tensor for a in fb.plan.activations}
    assert fb.to_dict()["steps"][0]["keep_fp"] == BLAMED


def test_auto_fallback_stops_at_its_limit(tiny_onnx, tiny_data, quantized):
    plan, ranges, int8 = quantized
    inputs = ValidationInputs.from_arrays("tiny", tiny_data, None)
    settings = ValidateSettings(latency=replace(ValidateSettings().latency, batches=(1,), runs=3, warmup=0))
    ref = compute_reference(OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32"), inputs, settings)
    fb = auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(2, Gates(min_cosine=1.0)), settings)
    assert not fb.passed and len(fb.steps) == 2 and "limit of 2" in fb.stopped
    assert fb.steps[1].after.fp_macs_share > fb.steps[0].after.fp_macs_share > 0
    with pytest.raises(UsageError, match="accuracy gate"):
        auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(2, Gates(max_p99_ms=5)))
