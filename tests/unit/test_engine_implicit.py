"""Q/DQ -> plain ONNX + ranges (DLA on TensorRT 10) and the calibration-cache text it feeds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.engine.implicit import strip_qdq
from rescompile.engine.settings import parse_version
from rescompile.engine.trt_calib_cache import cache_version, read_cache, scale_hex, write_cache
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


def test_strip_removes_every_qdq_and_keeps_the_fp32_graph(tiny_onnx: onnx.ModelProto, tiny_int8: onnx.ModelProto,
                                                          tiny_data: np.ndarray) -> None:  # fmt: skip
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
    # Ranges are carried through ops that cannot widen them (the pooled features feeding the FC).
    plain = strip_qdq(tiny_int8).model
    pool = next(n for n in plain.graph.node if n.op_type in ("GlobalAveragePool", "Flatten"))
    assert pool.output[0] in ranges or pool.input[0] not in ranges


def test_asymmetric_uint8_model_is_refused_for_dla(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    ort_model = make_int8(tiny_onnx, tiny_data, policy="onnxruntime")
    zps = [numpy_helper.to_array(t) for t in ort_model.graph.initializer if t.name.endswith("zero_point")]
    if not any(np.any(z != 0) for z in zps):
        pytest.skip("the onnxruntime policy produced only zero zero-points on this data")
    with pytest.raises(UsageError, match="zero point"):
        strip_qdq(ort_model)


def test_cache_version_numbers_from_the_notes() -> None:
    assert cache_version(parse_version("10.3.0")) == 100300
    assert cache_version(parse_version("10.16.1.11")) == 101601
    assert cache_version(parse_version("8.5.2")) == 8502
    with pytest.raises(UsageError, match="removed in 11.0"):
        cache_version(parse_version("11.0"))


def test_scale_hex_is_big_endian_float32_of_amax_over_127() -> None:
    assert scale_hex(127.0) == "3f800000"
    assert scale_hex(1.0) == "3c010204"


def test_cache_round_trip_and_header() -> None:
    ranges = {"b": 2.5, "a:0": 127.0, "/layer1/Relu_output_0": 0.75}
    text = write_cache(ranges, parse_version("10.3.0"))
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2" and lines[1] == "/layer1/Relu_output_0: " + scale_hex(0.75)
    header, back = read_cache(text)
    assert header == lines[0] and back.keys() == ranges.keys()
    assert all(back[k] == pytest.approx(v, rel=1e-6) for k, v in ranges.items())
    assert write_cache(ranges, parse_version("10.3.0"), "MinMaxCalibration").startswith("TRT-100300-MinMaxCalibration")
    for bad in ({"x": 0.0}, {"x": float("inf")}, {"x": float("nan")}):
        with pytest.raises(UsageError):
            write_cache(bad, parse_version("10.3"))
    with pytest.raises(UsageError):
        read_cache("not a cache")
