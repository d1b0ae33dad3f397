"""The proof: INT8 graphs made by each policy pass; hand-broken ones fail with the right rule, naming the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rescompile.graph.index import GraphIndex, node_name
from rescompile.quantize import Policy
from rescompile.quantize.verify import detect_policy, verify_int8
from tests.models import add_qdq, copy_model, find_node, quantize


@pytest.fixture(scope="module")
def trt(tiny_onnx):
    return quantize(tiny_onnx, Policy.TENSORRT)


@pytest.fixture(scope="module")
def ort(tiny_onnx):
    return quantize(tiny_onnx, Policy.ONNXRUNTIME)


# -- graph surgery on copies of the INT8 model ---------------------------------------------------------------


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def bypass(model: onnx.ModelProto, consumer: str, index: int) -> onnx.ModelProto:
    """Make ``consumer`` read the float tensor behind the Q/DQ pair on its input (drop the pair if unused)."""
    m = copy_model(model)
    idx = GraphIndex.build(m.graph)
    node = find_node(m, consumer)
    dq = idx.producer[node.input[index]]
    q = idx.producer[dq.input[0]]
    node.input[index] = q.input[0]
    if not any(dq.output[0] in n.input for n in m.graph.node):
        m.graph.node.remove(dq)
        if not any(q.output[0] in n.input for n in m.graph.node):
            m.graph.node.remove(q)
    return m


def checked(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model)  # the graph is valid ONNX: only the proof can catch what is wrong
    return model


def violation(report, rule: str, node: str):  # type: ignore[no-untyped-def]
    hits = [v for v in report.violations if v.rule == rule and v.node == node]
    assert hits, f"no [{rule}] violation at {node}; got: " + "; ".join(map(str, report.violations))
    return hits[0]


# -- both policies' own output passes ------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["trt", "ort"])
def test_own_output_passes_with_and_without_plan(tiny_onnx, fixture, request):
    plan, model = request.getfixturevalue(fixture)
    for report in (verify_int8(tiny_onnx, model, plan), verify_int8(tiny_onnx, model)):
        assert report.ok, report.violations
        assert report.policy == plan.policy and report.residual_adds == 2
        assert all(report.checks[r] > 0 for r in ("topology", "residual", "weight-values", "fusion", "fan-out"))
    assert detect_policy(model) == plan.policy


# -- hand-broken graphs, tensorrt policy ---------------------------------------------------------------------


def test_extra_qdq_between_conv_and_add(tiny_onnx, trt):
    plan, model = trt
    block = plan.residual_adds[1]
    add = find_node(model, block.add)
    broken = checked(add_qdq(model, block.add, list(add.input).index(block.main)))
    report = verify_int8(tiny_onnx, broken, plan)
    v = violation(report, "residual", block.add)
    assert "main-branch input" in v.message and "R5" in v.message
    violation(report, "fusion", block.main_producer)  # R4: the Conv's output is quantized
    violation(report, "plan", block.main)


def test_asymmetric_zero_point(tiny_onnx, trt):
    plan, model = trt
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    broken = copy_model(model)
    _init(broken, q.input[2]).CopyFrom(numpy_helper.from_array(np.int8(3), q.input[2]))
    report = verify_int8(tiny_onnx, checked(broken), plan)
    assert "must be 0" in violation(report, "zero-point", node_name(q)).message


def test_missing_shortcut_qdq(tiny_onnx, trt):
    plan, model = trt
    block = plan.residual_adds[0]  # projection shortcut: its Q/DQ serves only this Add
    add = find_node(model, block.add)
    broken = checked(bypass(model, block.add, [i for i, t in enumerate(add.input) if t.endswith("_dequantized")][0]))
    report = verify_int8(tiny_onnx, broken, plan)
    v = violation(report, "residual", block.add)
    assert f"shortcut input {block.shortcut} is not quantized" in v.message
    violation(report, "plan", block.shortcut)


def test_rewired_edge(tiny_onnx, trt):
    plan, model = trt
    conv = find_node(model, "/blocks/blocks.1/conv2/Conv")
    stem_relu_dq = next(
        n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("/blocks/blocks.0/relu")
    )
    broken = copy_model(model)
    find_node(broken, "/blocks/blocks.1/conv2/Conv").input[0] = stem_relu_dq
    report = verify_int8(tiny_onnx, checked(broken), plan)
    v = violation(report, "topology", node_name(conv))
    assert "input 0 reads" in v.message and "the FP32 graph reads" in v.message


def test_qdq_between_add_and_relu(tiny_onnx, trt):
    plan, model = trt
    block = plan.residual_adds[1]
    report = verify_int8(tiny_onnx, checked(add_qdq(model, _relu(model, block), 0)), plan)
    assert "between the Add and its ReLU" in violation(report, "residual", block.add).message


def _relu(model: onnx.ModelProto, block) -> str:  # type: ignore[no-untyped-def]
    return next(node_name(n) for n in model.graph.node if n.op_type == "Relu" and n.input[0] == block.add_output)


def test_wrong_weight_axis_and_tampered_weight(tiny_onnx, trt):
    plan, model = trt
    dq = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized") and len(_init(model, n.input[0]).dims) == 4
    )
    broken = copy_model(model)
    next(a for a in find_node(broken, node_name(dq)).attribute if a.name == "axis").i = 1
    report = verify_int8(tiny_onnx, broken, plan)
    assert "expected per-channel axis 0" in violation(report, "weight-axis", node_name(dq)).message

    broken = copy_model(model)
    w = _init(broken, dq.input[0])
    values = numpy_helper.to_array(w).copy()
    values.flat[0] = -values.flat[0] if values.flat[0] else 100
    w.CopyFrom(numpy_helper.from_array(values, w.name))
    report = verify_int8(tiny_onnx, checked(broken), plan)
    conv = next(node_name(n) for n in model.graph.node if dq.output[0] in n.input)
    assert "differs from FP32" in violation(report, "weight-values", conv).message


def test_weight_zero_point_of_the_wrong_size(tiny_onnx, trt):
    plan, model = trt
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(_init(model, n.input[0]).dims) == 4)
    broken = copy_model(model)
    zp = _init(broken, dq.input[2])
    assert zp.dims[0] > 3
    zp.CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), zp.name))
    report = verify_int8(tiny_onnx, broken, plan)
    conv = next(node_name(n) for n in model.graph.node if dq.output[0] in n.input)
    assert "does not match the shape" in violation(report, "weight-values", conv).message


def test_two_quantizers_at_a_fan_out(tiny_onnx, trt):
    plan, model = trt
    block = plan.residual_adds[1]  # identity block: its input fans out to conv1 and the Add
    add = find_node(model, block.add)
    i = [k for k, t in enumerate(add.input) if t.endswith("_dequantized")][0]
    broken = bypass(model, block.add, i)
    broken = checked(add_qdq(broken, block.add, i))
    report = verify_int8(tiny_onnx, broken, plan)
    assert "one shared Q/DQ expected" in violation(report, "fan-out", block.shortcut).message


def test_missing_node(tiny_onnx, trt):
    plan, model = trt
    broken = copy_model(model)
    relu = find_node(broken, "/stem/stem.2/Relu")
    for n in broken.graph.node:
        n.input[:] = [relu.input[0] if x == relu.output[0] else x for x in n.input]
    broken.graph.node.remove(relu)
    report = verify_int8(tiny_onnx, checked(broken), plan)
    assert "missing from the INT8 graph" in violation(report, "topology", "/stem/stem.2/Relu").message


# -- hand-broken graphs, onnxruntime policy ------------------------------------------------------------------


def test_ort_qdq_between_conv_and_relu(tiny_onnx, ort):
    plan, model = ort
    relu = next(n for n in model.graph.node if n.op_type == "Relu" and GraphIndex.build(model.graph).producer[n.input[0]].op_type == "Conv")
    conv = node_name(GraphIndex.build(model.graph).producer[relu.input[0]])
    report = verify_int8(tiny_onnx, checked(add_qdq(model, node_name(relu), 0, zp=128, dtype=np.uint8)), plan)
    assert "between" in violation(report, "fusion", conv).message


def test_ort_add_output_not_quantized(tiny_onnx, ort):
    plan, model = ort
    block = plan.residual_adds[0]
    relu = _relu(model, block)
    out = find_node(model, relu).output[0]
    broken = copy_model(model)
    idx = GraphIndex.build(broken.graph)
    ((q, _),) = idx.consumers[out]
    dq = idx.consumers[q.output[0]][0][0]
    for n in broken.graph.node:
        n.input[:] = [out if x == dq.output[0] else x for x in n.input]
    broken.graph.node.remove(q)
    broken.graph.node.remove(dq)
    report = verify_int8(tiny_onnx, checked(broken), plan)
    assert "runs the Add in float" in violation(report, "residual", block.add).message


def test_ort_nonzero_zero_point_after_relu_and_float_reader(tiny_onnx, ort):
    plan, model = ort
    block = plan.residual_adds[0]
    out = find_node(model, _relu(model, block)).output[0]
    q = GraphIndex.build(model.graph).consumers[out][0][0]
    broken = copy_model(model)
    _init(broken, q.input[2]).CopyFrom(numpy_helper.from_array(np.uint8(7), q.input[2]))
    report = verify_int8(tiny_onnx, checked(broken), plan)
    assert "after a ReLU" in violation(report, "zero-point", node_name(q)).message

    reader = plan.activation(out).consumers[0].rpartition(":")[0]
    report = verify_int8(tiny_onnx, checked(bypass(model, reader, 0)), plan)
    assert "reads float" in violation(report, "fan-out", reader).message


def test_ort_bias_scale_and_activation_type(tiny_onnx, ort):
    plan, model = ort
    bias_dq = next(
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and _init(model, n.input[0]).data_type == onnx.TensorProto.INT32
    )
    broken = copy_model(model)
    s = _init(broken, bias_dq.input[1])
    s.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(s) * 2, s.name))
    report = verify_int8(tiny_onnx, broken, plan)
    assert "input scale x weight scale" in violation(report, "scale", node_name(bias_dq)).message

    # A tensorrt-style (INT8) graph checked against the onnxruntime policy fails on type and placement.
    report = verify_int8(tiny_onnx, quantize(tiny_onnx, Policy.TENSORRT)[1], policy="onnxruntime")
    assert report.failed("dtype") and report.failed("residual") and report.failed("fusion")


def test_ort_full_range_weights_can_overflow_u8s8(tiny_onnx, ort):
    """O7: the same weights stored with twice the integers and half the scale (values up to 126) fail the proof."""
    plan, model = ort
    assert verify_int8(tiny_onnx, model, plan).ok
    broken = copy_model(model)
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    dq = next(n for n in broken.graph.node if n.output[0] == conv.input[1])
    q, s = _init(broken, dq.input[0]), _init(broken, dq.input[1])
    q.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(q).astype(np.int16) * 2).astype(np.int8), q.name))
    s.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(s) / 2, s.name))
    report = verify_int8(tiny_onnx, checked(broken), plan)
    assert "overflow the int16" in violation(report, "dtype", node_name(conv)).message
