"""Layerwise blame finds a deliberately broken scale (the search that fixes it: tests/unit/test_fallback.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rescompile.errors import UsageError
from rescompile.quantize import Policy
from rescompile.validate.layerwise import keep_fp_pattern, layerwise_blame, qdq_views

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
