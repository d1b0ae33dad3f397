"""Q/DQ -> plain ONNX + per-tensor ranges, for DLA on TensorRT 10 (implicit INT8)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.engine.implicit import strip_qdq
from rescompile.errors import UsageError
from rescompile.quantize import insert_qdq, plan_qdq


def make_int8(model: onnx.ModelProto, data: np.ndarray, policy: str = "tensorrt") -> onnx.ModelProto:
    plan = plan_qdq(model, policy)
    stats = collect_stats(model, plan.calibrated_tensors, iter([data]))
    return insert_qdq(model, plan, compute_ranges(stats, "max"))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.fixture(scope="module")
def tiny_int8(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> onnx.ModelProto:
    return make_int8(tiny_onnx, tiny_data)


def test_strip_removes_every_qdq_and_keeps_the_fp32_graph(
    tiny_onnx: onnx.ModelProto, tiny_int8: onnx.ModelProto, tiny_data: np.ndarray
) -> None:
    plain = strip_qdq(tiny_int8).model
    ops = [n.op_type for n in plain.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops == [n.op_type for n in tiny_onnx.graph.node]
    # Weights are the dequantized INT8 weights: close to FP32, not equal (per-channel rounding).
    ref, got = _run(tiny_onnx, tiny_data), _run(plain, tiny_data)
    cos = (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)
    assert cos > 0.999 and not np.array_equal(ref, got)


def test_ranges_are_the_activation_scales_times_127(tiny_int8: onnx.ModelProto) -> None:
    inits = {t.name: numpy_helper.to_array(t) for t in tiny_int8.graph.initializer}
    expected = {n.input[0]: float(inits[n.input[1]]) * 127.0 for n in tiny_int8.graph.node if n.op_type == "QuantizeLinear"}
    ranges = strip_qdq(tiny_int8).ranges
    assert expected and all(ranges[t] == pytest.approx(v) for t, v in expected.items())


def test_ranges_are_carried_through_ops_that_cannot_widen_them() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Relu", ["xd"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["p"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    out = strip_qdq(model)
    assert [n.op_type for n in out.model.graph.node] == ["Relu", "MaxPool", "Sigmoid"]
    assert out.model.graph.node[0].input[0] == "x"
    assert out.ranges == {"x": 63.5, "r": 63.5, "p": 63.5}  # not "y": Sigmoid is not range-preserving


def test_asymmetric_uint8_model_is_refused_for_dla(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    ort_model = make_int8(tiny_onnx, tiny_data, policy="onnxruntime")
    zps = [numpy_helper.to_array(t) for t in ort_model.graph.initializer if t.name.endswith("zero_point")]
    if not any(np.any(z != 0) for z in zps):
        pytest.skip("the onnxruntime policy produced only zero zero-points on this data")
    with pytest.raises(UsageError, match="zero point"):
        strip_qdq(ort_model)
