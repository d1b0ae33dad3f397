"""Cross-layer equalization, bias absorption and bias correction on small hand-made ONNX nets (ONNX Runtime, CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rescompile.bias_correction import channel_means, correct_biases
from rescompile.calibrate.collect import with_outputs
from rescompile.calibrate.ranges import TensorRange
from rescompile.equalize import EqualizeConfig, equalize_model
from rescompile.errors import ParityError
from rescompile.graph.equalize import absorb_biases, channel_ranges, equalize, find_pairs, scale_input_channels
from rescompile.quantize import insert_qdq, plan_qdq
from rescompile.runtime.sessions import ort_session


class Net:
    """A tiny ONNX graph builder: Convs, ReLUs, Clips and Adds on one N,C,H,W input."""

    def __init__(self, channels: int, size: int = 8, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.shape = (channels, size, size)
        self.k = 0

    def _name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def conv(
        self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, pad: bool = True, bias_mean: float = 0.0
    ) -> str:
        name = self._name("conv")
        w = (self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, f"{name}.w"))
        ins = [x, f"{name}.w"]
        if bias:
            self.inits.append(numpy_helper.from_array((bias_mean + 0.3 * self.rng.standard_normal(cout)).astype(np.float32), f"{name}.b"))
            ins.append(f"{name}.b")
        p = k // 2 if pad else 0
        self.nodes.append(helper.make_node("Conv", ins, [f"{name}.y"], name=name, kernel_shape=[k, k], pads=[p] * 4, group=group))
        return f"{name}.y"

    def relu(self, x: str) -> str:
        name = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [f"{name}.y"], name=name))
        return f"{name}.y"

    def relu6(self, x: str) -> str:
        name = self._name("clip")
        self.inits += [numpy_helper.from_array(np.float32(0), f"{name}.lo"), numpy_helper.from_array(np.float32(6), f"{name}.hi")]
        self.nodes.append(helper.make_node("Clip", [x, f"{name}.lo", f"{name}.hi"], [f"{name}.y"], name=name))
        return f"{name}.y"

    def add(self, a: str, b: str) -> str:
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}.y"], name=name))
        return f"{name}.y"

    def model(self, out: str) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *self.shape])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None, None, None])],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(m)
        return m


def conv_relu_chain(seed: int = 0) -> onnx.ModelProto:
    """conv -> relu -> conv -> relu -> conv 1x1: two chained pairs."""
    n = Net(3, seed=seed)
    y = n.relu(n.conv("input", 3, 8))
    y = n.relu(n.conv(y, 8, 6))
    return n.model(n.conv(y, 6, 4, k=1, pad=False))


def depthwise_net(seed: int = 0) -> onnx.ModelProto:
    """pointwise -> relu -> depthwise 3x3 -> relu -> pointwise (no padding: bias absorption applies).

    The depthwise Conv has high biases (as BatchNorm folding leaves them): its outputs stay above 0."""
    n = Net(4, seed=seed)
    y = n.relu(n.conv("input", 4, 8, k=1, pad=False))
    y = n.relu(n.conv(y, 8, 8, group=8, bias_mean=4.0))
    return n.model(n.conv(y, 8, 5, k=1, pad=False))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort_session(model, optimize=False)
    return np.asarray(sess.run(None, {"input": x})[0])


def inputs(model: onnx.ModelProto, n: int = 16, seed: int = 1) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def spread_channels(model: onnx.ModelProto, first: str, second: str, decades: float, seed: int = 0) -> onnx.ModelProto:
    """The inverse of equalization: output channel i of ``first`` times k_i, input channel i of ``second`` / k_i,
    k_i log-uniform over ``decades`` orders of magnitude (the function is unchanged, the ranges spread)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    w1 = numpy_helper.to_array(inits[nodes[first].input[1]])
    k = 10.0 ** np.random.default_rng(seed).uniform(-decades / 2, decades / 2, w1.shape[0])
    inits[nodes[first].input[1]].CopyFrom(numpy_helper.from_array((w1 * k[:, None, None, None]).astype(np.float32), nodes[first].input[1]))
    b1 = numpy_helper.to_array(inits[nodes[first].input[2]])
    inits[nodes[first].input[2]].CopyFrom(numpy_helper.from_array((b1 * k).astype(np.float32), nodes[first].input[2]))
    w2 = numpy_helper.to_array(inits[nodes[second].input[1]])
    group = next((a.i for a in nodes[second].attribute if a.name == "group"), 1)
    w2 = scale_input_channels(w2, group, 1 / k).astype(np.float32)
    inits[nodes[second].input[1]].CopyFrom(numpy_helper.from_array(w2, nodes[second].input[1]))
    return m


def test_equalization_preserves_the_function_and_equalizes_the_ranges() -> None:
    model = spread_channels(conv_relu_chain(), "conv1", "conv3", decades=3)
    x = inputs(model)
    eq = equalize(model)
    assert [(p.pair.first, p.pair.second, p.pair.activation) for p in eq.pairs] == [("conv1", "conv3", "Relu"), ("conv3", "conv5", "Relu")]
    assert eq.converged and 1 < eq.sweeps < 100
    np.testing.assert_allclose(run(eq.model, x), run(model, x), rtol=1e-4, atol=1e-5)
    for p in eq.pairs:
        r1, r2 = channel_ranges(eq.model, p.pair)
        np.testing.assert_allclose(r1 / r1.max(), r2 / r2.max(), rtol=1e-3)  # the paper's optimum: r1_i / R1 == r2_i / R2
    r1, _ = channel_ranges(model, eq.pairs[0].pair)
    assert r1.max() / r1.min() > 30  # the spread was there, and the scales undid it
    assert eq.pairs[0].scale_max / eq.pairs[0].scale_min > 30


def test_equalization_of_a_depthwise_net_with_bias_absorption() -> None:
    model = spread_channels(depthwise_net(), "conv1", "conv3", decades=2)
    x = inputs(model, 32)
    pairs, skipped = find_pairs(model)
    assert [(p.first, p.second) for p in pairs] == [("conv1", "conv3"), ("conv3", "conv5")] and not skipped
    result = equalize_model(model, lambda: [x[:16], x[16:]])
    eq = result.equalization
    for p in eq.pairs:
        r1, r2 = channel_ranges(eq.model, p.pair)
        np.testing.assert_allclose(r1 / r1.max(), r2 / r2.max(), rtol=1e-3)
    # the depthwise conv pads, so nothing is absorbed into it; the 1x1 after it takes the biases
    assert [p.absorption for p in eq.pairs][0].startswith("the second Conv pads")
    assert eq.pairs[1].absorption == "done" and eq.pairs[1].absorbed > 0
    assert result.max_abs_error <= result.tolerance and result.min_cosine > 0.99999
    np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-4, atol=1e-4)
    d = result.to_dict()
    assert d["pairs_equalized"] == 2 and d["biases_absorbed"] == 1 and d["parity"]["samples"] == 32


def test_absorption_beyond_the_data_is_caught_by_the_parity_check() -> None:
    model = depthwise_net()
    x = inputs(model, 8)
    eq = equalize(model)
    wrong = absorb_biases(eq, {eq.pairs[1].pair.tensor: np.full(8, 50.0)})  # far above the channels' minimum: not exact
    with pytest.raises(ParityError, match="equalize"):
        from rescompile.equalize import check_outputs

        check_outputs(run(model, x), run(wrong.model, x), EqualizeConfig())


def test_pairs_with_other_consumers_and_relu6_are_skipped() -> None:
    n = Net(4)
    a = n.relu(n.conv("input", 4, 4))  # feeds conv3 and the Add: a residual block input
    b = n.conv(a, 4, 4)
    c = n.relu(n.add(a, b))
    d = n.relu6(n.conv(c, 4, 4))
    model = n.model(n.conv(d, 4, 4))
    pairs, skipped = find_pairs(model)
    assert not pairs
    reasons = {(s.first, s.second): s.reason for s in skipped}
    assert "other consumers" in reasons[("conv1", "conv3")]
    assert "Clip(0, 6)" in reasons[("conv6", "conv8")]
    eq = equalize(model)
    assert not eq.pairs and eq.model.SerializeToString() == model.SerializeToString()  # nothing touched


def _int8(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """The tensorrt-policy Q/DQ model of ``model``, max calibration on ``x``."""
    plan = plan_qdq(model, "tensorrt")
    tensors = plan.calibrated_tensors
    sess = ort_session(with_outputs(model, tensors), optimize=False)
    outs = sess.run(tensors, {"input": x})
    ranges = {t: TensorRange(float(np.abs(y).max()), float(y.min()), float(y.max()), "max") for t, y in zip(tensors, outs, strict=True)}
    return insert_qdq(model, plan, ranges)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_equalization_makes_int8_of_a_spread_model_measurably_better() -> None:
    model = spread_channels(spread_channels(conv_relu_chain(seed=3), "conv1", "conv3", 4, seed=1), "conv3", "conv5", 4, seed=2)
    calib, held = inputs(model, 64, seed=5), inputs(model, 64, seed=6)
    ref = run(model, held)
    eq = equalize(model).model
    plain = _cosine(run(_int8(model, calib), held), ref)
    equalized = _cosine(run(_int8(eq, calib), held), ref)
    assert plain < 0.99 and equalized > 0.999 and (1 - equalized) < (1 - plain) / 10


def test_bias_correction_reduces_the_mean_output_error_on_calibration_data() -> None:
    model = conv_relu_chain(seed=4)
    calib = inputs(model, 48, seed=7)
    plan = plan_qdq(model, "tensorrt")
    tensors = plan.calibrated_tensors
    outs = ort_session(with_outputs(model, tensors), optimize=False).run(tensors, {"input": calib})
    # coarse ranges (a quarter of the max): clipping shifts the means, which bias correction must undo
    ranges = {t: TensorRange(float(np.abs(y).max()) / 4, float(y.min()), float(y.max()), "max") for t, y in zip(tensors, outs, strict=True)}
    batches = lambda: [calib[:24], calib[24:]]  # noqa: E731 - the calibration inputs only: no validation data exists here
    bc = correct_biases(model, plan, ranges, batches)
    assert [x.node for x in bc.layers] == ["conv1", "conv3", "conv5"]
    assert all(x.error_after < x.error_before for x in bc.layers)
    assert bc.layers[-1].error_after < 1e-3 < bc.layers[-1].error_before
    outputs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    ref, _ = channel_means(model, outputs, batches)
    got, _ = channel_means(bc.int8, outputs, batches)
    plain, _ = channel_means(insert_qdq(model, plan, ranges), outputs, batches)
    last = outputs[-1]
    assert np.abs(got[last] - ref[last]).mean() < np.abs(plain[last] - ref[last]).mean() / 10
    assert bc.to_dict()["layers_corrected"] == 3 and bc.samples == 48
    doc = bc.to_json()
    assert '"shift"' in doc and "rescompile.bias_correction/1" in doc


def test_bias_correction_under_the_onnxruntime_policy_keeps_int32_biases() -> None:
    model = conv_relu_chain(seed=5)
    calib = inputs(model, 16, seed=8)
    plan = plan_qdq(model, "onnxruntime")
    assert plan.biases
    tensors = plan.calibrated_tensors
    outs = ort_session(with_outputs(model, tensors), optimize=False).run(tensors, {"input": calib})
    ranges = {t: TensorRange(float(np.abs(y).max()), float(y.min()), float(y.max()), "max") for t, y in zip(tensors, outs, strict=True)}
    bc = correct_biases(model, plan, ranges, lambda: [calib])
    assert len(bc.layers) == 3
    inits = {t.name: numpy_helper.to_array(t) for t in bc.int8.graph.initializer}
    floats = {t.name: numpy_helper.to_array(t) for t in bc.model.graph.initializer}
    producers = {o: n for n in bc.int8.graph.node for o in n.output}
    for conv in (n for n in bc.int8.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[2]]  # the corrected bias, re-quantized to INT32 at input scale x weight scale
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int32
        corrected = floats[f"{conv.name}.b"]
        np.testing.assert_allclose(inits[dq.input[0]] * inits[dq.input[1]], corrected, atol=float(inits[dq.input[1]].max()))
    assert any(
        np.any(floats[f"{c}.b"] != numpy_helper.to_array(t))
        for c in ("conv1", "conv3", "conv5")
        for t in model.graph.initializer
        if t.name == f"{c}.b"
    )
    assert all(x.error_after <= x.error_before + 1e-6 for x in bc.layers)


def test_the_flags_are_recorded_in_the_config_only_when_on() -> None:
    from rescompile.config import BuildConfig

    plain = BuildConfig().to_dict()
    assert "equalize" not in plain and "bias_correction" not in plain  # a plain build's manifest keeps its bytes
    on = BuildConfig.from_flat(equalize=True, bias_correction=True).to_dict()
    assert on["equalize"] is True and on["bias_correction"] is True and set(on) - set(plain) == {"equalize", "bias_correction"}


def test_a_sweep_grid_takes_the_flags(tmp_path) -> None:
    from rescompile.errors import UsageError
    from rescompile.sweep.grid import load_sweep

    spec = tmp_path / "sweep.yaml"
    spec.write_text("grid:\n  equalize: [false, true]\n  bias_correction: [true]\n")
    points = load_sweep(spec).points
    assert [(p.config.transform.equalize, p.config.transform.bias_correction) for p in points] == [(False, True), (True, True)]
    assert len({p.key for p in points}) == 2
    spec.write_text("grid:\n  equalize: [yes-please]\n")
    with pytest.raises(UsageError, match="equalize must be true or false"):
        load_sweep(spec)
