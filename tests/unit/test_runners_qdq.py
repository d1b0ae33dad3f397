"""How ONNX Runtime runs an INT8 candidate: TensorRT-scheme graphs (signed INT8 activations) run their Q/DQ nodes
literally, UINT8 graphs keep ONNX Runtime's integer-kernel fusion; the Ray recipe carries the choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescompile.runtime.runners import OnnxRuntimeRunner, fuses_qdq
from rescompile.validate.on_ray import make_runner, recipe_of

X_SCALE = 0.05
W_SCALES = np.array([0.01, 0.02, 0.03], np.float32)


def _qdq_conv(activation_type: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """input -> Q/DQ (per-tensor) -> Conv 3x3 (weights INT8 per channel, DequantizeLinear) -> Relu; and the INT8 weights."""
    w_q = np.random.default_rng(0).integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)
    zp = np.array(0, np.int8) if activation_type == TensorProto.INT8 else np.array(128, np.uint8)
    inits = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(zp, "x_zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(W_SCALES, "w_scale"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 5, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 5, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w_q


def _expected(x: np.ndarray, w_q: np.ndarray, signed: bool) -> np.ndarray:
    """The ONNX semantics in numpy: round half to even, saturate, dequantize, a 3x3 convolution in float64, ReLU."""
    lo, hi, zp = (-128, 127, 0) if signed else (0, 255, 128)
    xq = (np.clip(np.rint(x / np.float32(X_SCALE)) + zp, lo, hi) - zp).astype(np.float64) * X_SCALE
    w = w_q.astype(np.float64) * W_SCALES[:, None, None, None]
    padded = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((len(x), 3, 5, 5))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + 5, j : j + 5], w[:, :, i, j])
    return np.maximum(out, 0.0)


def _weight_dequantizers(path: Path) -> int:
    """DequantizeLinear nodes left on initializers in the graph ONNX Runtime optimized."""
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    return sum(n.op_type == "DequantizeLinear" and n.input[0] in inits for n in model.graph.node)


def test_signed_int8_activations_run_literally_with_weights_folded(tmp_path: Path) -> None:
    model, w_q = _qdq_conv(TensorProto.INT8)
    assert not fuses_qdq(model)
    x = np.random.default_rng(1).uniform(-4, 4, (4, 2, 5, 5)).astype(np.float32)
    literal = OnnxRuntimeRunner(model, threads=1, optimized_path=str(tmp_path / "literal.onnx"))
    assert literal.fuse_qdq is False
    np.testing.assert_allclose(literal.infer(x), _expected(x, w_q, signed=True), rtol=1e-5, atol=1e-5)
    fused = OnnxRuntimeRunner(model, threads=1, optimized_path=str(tmp_path / "fused.onnx"), fuse_qdq=True)
    np.testing.assert_allclose(fused.infer(x), literal.infer(x), rtol=1e-5, atol=1e-5)  # the same numbers either way
    # Run literally, the weights' DequantizeLinear is folded once into FP32 weights (why it is faster); fused, it stays.
    assert _weight_dequantizers(tmp_path / "literal.onnx") == 0
    assert _weight_dequantizers(tmp_path / "fused.onnx") == 1


def test_uint8_activations_keep_onnx_runtime_fusion() -> None:
    model, w_q = _qdq_conv(TensorProto.UINT8)
    assert fuses_qdq(model)
    runner = OnnxRuntimeRunner(model, threads=1)
    assert runner.fuse_qdq is True
    x = np.random.default_rng(2).uniform(-4, 4, (2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(x), _expected(x, w_q, signed=False), rtol=1e-4, atol=1e-4)


def test_a_model_given_as_bytes_is_fused_unless_told() -> None:
    model, _ = _qdq_conv(TensorProto.INT8)
    assert OnnxRuntimeRunner(model.SerializeToString(), threads=1).fuse_qdq is True
    assert OnnxRuntimeRunner(model.SerializeToString(), threads=1, fuse_qdq=False).fuse_qdq is False


def test_a_ray_task_rebuilds_the_runner_with_its_qdq_choice() -> None:
    model, _ = _qdq_conv(TensorProto.INT8)
    runner = OnnxRuntimeRunner(model, "onnxruntime-int8", threads=1)
    recipe = recipe_of(runner)
    assert recipe is not None and recipe[4] is False
    again = make_runner(recipe)
    x = np.random.default_rng(3).uniform(-4, 4, (2, 2, 5, 5)).astype(np.float32)
    assert again.fuse_qdq is False and again.name == "onnxruntime-int8"
    assert np.array_equal(again.infer(x), runner.infer(x))
