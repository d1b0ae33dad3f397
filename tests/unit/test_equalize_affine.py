"""Cross-layer equalization of per-channel affine -> ReLU -> Conv(s) pairs (GroupNorm's Mul/Add, a plain Mul/Add, the
GroupNormalization op) on small hand-made ONNX nets: exact function preservation (ONNX Runtime, CPU) and ranges at the
tensor the Convs read equalized against their weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescompile.equalize import channel_maxima, equalize_model
from rescompile.graph.equalize import equalize, find_affine_pairs, scale_input_channels
from rescompile.report.blocks import stage_changes
from rescompile.runtime.sessions import ort_session

C = 8


class Affine:
    """A tiny graph: Conv stem, then one per-channel affine -> Relu -> readers; the affine spread over ``decades``
    (gamma and beta of channel c times k_c, every reader's input channel c divided by k_c: the function is the same)."""

    def __init__(self, seed: int = 0, decades: float = 3.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.k = 10.0 ** self.rng.uniform(-decades / 2, decades / 2, C)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.opset = 17

    def init(self, name: str, value: np.ndarray, dtype: type = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, ins: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, ins, [f"{name}.y"], name=name, **attrs))
        return f"{name}.y"

    def stem(self) -> str:
        w = self.rng.standard_normal((C, 3, 3, 3)) / 5
        return self.node("Conv", ["input", self.init("stem.w", w)], "stem", kernel_shape=[3, 3], pads=[1] * 4)

    def gamma_beta(self) -> tuple[np.ndarray, np.ndarray]:
        gamma = (0.5 + self.rng.random(C)) * self.k
        beta = self.rng.standard_normal(C) * 0.5 * self.k
        return gamma, beta

    def conv(self, x: str, name: str, cout: int, k: int = 3, group: int = 1, stride: int = 1) -> str:
        w = self.rng.standard_normal((cout, C // group, k, k)) / np.sqrt(C // group * k * k)
        w = scale_input_channels(w, group, 1 / self.k)
        ins = [x, self.init(f"{name}.w", w), self.init(f"{name}.b", self.rng.standard_normal(cout) * 0.1)]
        return self.node("Conv", ins, name, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride] * 2)

    def model(self, out: str) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            "affine",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None, None, None])],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        onnx.checker.check_model(m)
        return m


def groupnorm_two_convs() -> onnx.ModelProto:
    """stem -> GroupNorm as torch exports it (Reshape -> InstanceNormalization -> Reshape(Shape) -> Mul -> Add) -> Relu
    -> conv1 3x3 and a strided 1x1 projection (a pre-activation block's two readers) -> Add."""
    n = Affine()
    x = n.stem()
    groups = 2
    r = n.node("Reshape", [x, n.init("grp.shape", np.array([0, groups, -1]), np.int64)], "gn.reshape")
    i = n.node("InstanceNormalization", [r, n.init("gn.one", np.ones(groups)), n.init("gn.zero", np.zeros(groups))], "gn.in")
    shape = n.node("Shape", [x], "gn.shape")
    back = n.node("Reshape", [i, shape], "gn.reshape1")
    gamma, beta = n.gamma_beta()
    m = n.node("Mul", [back, n.init("gn.gamma", gamma.reshape(C, 1, 1))], "gn.mul")
    a = n.node("Add", [m, n.init("gn.beta", beta.reshape(C, 1, 1))], "gn.add")
    y = n.node("Relu", [a], "relu")
    main = n.conv(y, "conv1", 8, stride=2)
    short = n.conv(y, "down", 8, k=1, stride=2)
    return n.model(n.node("Add", [main, short], "out"))


def affine_depthwise(scalar_shift: bool = False) -> onnx.ModelProto:
    """stem -> Mul(gamma, shape 1,C,1,1, the constant first) -> Add(beta, C,1,1 or one value for all) -> Relu ->
    depthwise 3x3."""
    n = Affine(seed=1)
    x = n.stem()
    gamma, beta = n.gamma_beta()
    if scalar_shift:  # one beta for every channel: only a positive one keeps ReLU exact after the spread, so no spread here
        n.k = np.ones(C)
        gamma, beta = n.gamma_beta()
    m = n.node("Mul", [n.init("gamma", gamma.reshape(1, C, 1, 1)), x], "mul")
    a = n.node("Add", [m, n.init("beta", np.float32(0.3) if scalar_shift else beta.reshape(C, 1, 1))], "add")
    y = n.node("Relu", [a], "relu")
    return n.model(n.conv(y, "dw", C, group=C))


def groupnorm_op() -> onnx.ModelProto:
    """stem -> GroupNormalization (opset 21: per-channel scale and bias) -> Relu -> conv."""
    n = Affine(seed=2)
    n.opset = 21
    x = n.stem()
    gamma, beta = n.gamma_beta()
    y = n.node("Relu", [n.node("GroupNormalization", [x, n.init("gn.s", gamma), n.init("gn.b", beta)], "gn", num_groups=2)], "relu")
    return n.model(n.conv(y, "conv1", 6))


def relu_feeds_an_add() -> onnx.ModelProto:
    """Mul -> Add -> Relu read by a Conv and by a residual Add: not equalizable (the Add would see the scaled tensor)."""
    n = Affine(seed=3)
    x = n.stem()
    gamma, beta = n.gamma_beta()
    a = n.node("Add", [n.node("Mul", [x, n.init("gamma", gamma.reshape(C, 1, 1))], "mul"), n.init("beta", beta.reshape(C, 1, 1))], "add")
    y = n.node("Relu", [a], "relu")
    return n.model(n.node("Add", [n.conv(y, "conv1", C), y], "res"))


def inputs(n: int = 32, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort_session(model, optimize=False).run(None, {"input": x})[0])


def weight_ranges(model: onnx.ModelProto, convs: tuple[str, ...]) -> np.ndarray:
    """max |w| per input channel over ``convs``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out = []
    for c in convs:
        w = inits[nodes[c].input[1]]
        group = next((a.i for a in nodes[c].attribute if a.name == "group"), 1)
        per = w.shape[0] // group
        v = np.abs(w).reshape(group, per, w.shape[1], -1).max(axis=(1, 3))  # (group, in per group)
        out.append(v.reshape(-1))
    return np.max(out, axis=0)


def check_equalized(model: onnx.ModelProto, x: np.ndarray, expected_pairs: int = 1) -> None:
    """The stage on ``model``: function unchanged; at the tensor the Convs read, each channel's range on the data now
    equals its weights' range (the optimum sqrt(r1 r2) on both sides), and the spread of the ranges is gone."""
    batches = lambda: [x[:16], x[16:]]  # noqa: E731
    result = equalize_model(model, batches)
    eq = result.equalization
    assert len(eq.affine) == expected_pairs and not eq.pairs
    np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-4, atol=1e-4)
    assert result.max_abs_error <= result.tolerance
    for a in eq.affine:
        assert a.range_source == "calibration"
        before = channel_maxima(model, [a.pair.tensor], batches)[a.pair.tensor]
        after = channel_maxima(result.model, [a.pair.tensor], batches)[a.pair.tensor]
        np.testing.assert_allclose(after, weight_ranges(result.model, a.pair.seconds), rtol=1e-4)
        np.testing.assert_allclose(after, np.sqrt(before * weight_ranges(model, a.pair.seconds)), rtol=1e-4)
        live = before > 0
        assert before[live].max() / before[live].min() > 10 * after[live].max() / after[live].min()


def test_groupnorm_export_pattern_feeding_two_convs_is_equalized_exactly() -> None:
    model = groupnorm_two_convs()
    pairs, skipped = find_affine_pairs(model)
    assert [(p.nodes, p.seconds, p.activation, p.channels) for p in pairs] == [(("gn.mul", "gn.add"), ("conv1", "down"), "Relu", C)]
    assert not skipped
    check_equalized(model, inputs())
    d = equalize_model(model, lambda: [inputs()]).to_dict()
    assert d["affine_pairs_equalized"] == 1 and d["pairs_equalized"] == 0 and d["convs"] == ["conv1", "down"]
    assert d["affines"] == ["gn.mul", "gn.add"] and d["affine_pairs"][0]["range"] == "calibration"
    assert stage_changes({"stages": {"equalize": d}}) == {n: ("EQ",) for n in ("conv1", "down", "gn.mul", "gn.add")}


def test_mul_add_affine_into_a_depthwise_conv_is_equalized_exactly() -> None:
    model = affine_depthwise()
    pairs, _ = find_affine_pairs(model)
    assert [(p.nodes, p.seconds) for p in pairs] == [(("mul", "add"), ("dw",))]
    check_equalized(model, inputs())


def test_a_shift_shared_by_all_channels_becomes_one_per_channel() -> None:
    model = affine_depthwise(scalar_shift=True)
    x = inputs()
    eq = equalize(model)  # data-free ranges: beta + 3 |gamma|
    assert eq.affine[0].range_source == "data-free estimate" and eq.affine[0].scale_max > eq.affine[0].scale_min
    inits = {t.name: numpy_helper.to_array(t) for t in eq.model.graph.initializer}
    assert inits["beta"].shape == (C, 1, 1) and inits["gamma"].shape == (1, C, 1, 1)
    onnx.checker.check_model(eq.model)
    np.testing.assert_allclose(run(eq.model, x), run(model, x), rtol=1e-4, atol=1e-4)


def test_the_groupnormalization_op_scale_and_bias_are_equalized_exactly() -> None:
    model = groupnorm_op()
    pairs, _ = find_affine_pairs(model)
    assert [(p.nodes, p.scale, p.shift) for p in pairs] == [(("gn",), "gn.s", "gn.b")]
    check_equalized(model, inputs())


def test_a_relu_output_also_read_by_an_add_is_skipped_and_left_alone() -> None:
    model = relu_feeds_an_add()
    pairs, skipped = find_affine_pairs(model)
    assert pairs == [] and [(s.first, s.second) for s in skipped] == [("mul", "conv1")]
    assert "also read by Add" in skipped[0].reason
    eq = equalize(model)
    assert eq.affine == [] and eq.skipped == skipped
    assert {t.name: t.SerializeToString() for t in eq.model.graph.initializer} == {
        t.name: t.SerializeToString() for t in model.graph.initializer
    }


def test_an_affine_pair_chained_with_a_conv_pair_converges_and_keeps_the_function() -> None:
    """Mul -> Add -> Relu -> conv1 -> Relu -> conv2: conv1 is read by the affine pair and first of a Conv pair."""
    n = Affine(seed=4)
    x = n.stem()
    gamma, beta = n.gamma_beta()
    a = n.node("Add", [n.node("Mul", [x, n.init("gamma", gamma.reshape(C, 1, 1))], "mul"), n.init("beta", beta.reshape(C, 1, 1))], "add")
    h = n.node("Relu", [n.conv(n.node("Relu", [a], "relu"), "conv1", C)], "relu1")
    n.k = np.ones(C)
    model = n.model(n.conv(h, "conv2", 4))
    xs = inputs()
    result = equalize_model(model, lambda: [xs])
    eq = result.equalization
    assert [(p.pair.first, p.pair.second) for p in eq.pairs] == [("conv1", "conv2")] and [a.pair.seconds for a in eq.affine] == [("conv1",)]
    assert eq.converged and eq.sweeps > 1 and eq.touched == ["conv1", "conv2"] and eq.affines == ["mul", "add"]
    np.testing.assert_allclose(run(result.model, xs), run(model, xs), rtol=1e-4, atol=1e-4)
    after = channel_maxima(result.model, [eq.affine[0].pair.tensor], lambda: [xs])[eq.affine[0].pair.tensor]
    np.testing.assert_allclose(after, weight_ranges(result.model, ("conv1",)), rtol=1e-3)  # balanced at the fixed point


def test_an_affine_before_relu6_is_skipped_with_the_reason() -> None:
    n = Affine(seed=6)
    x = n.stem()
    gamma, beta = n.gamma_beta()
    a = n.node("Add", [n.node("Mul", [x, n.init("gamma", gamma.reshape(C, 1, 1))], "mul"), n.init("beta", beta.reshape(C, 1, 1))], "add")
    y = n.node("Clip", [a, n.init("lo", np.float32(0)), n.init("hi", np.float32(6))], "relu6")
    pairs, skipped = find_affine_pairs(n.model(n.conv(y, "conv1", 4)))
    assert pairs == [] and [(s.first, s.second) for s in skipped] == [("mul", "conv1")] and "ReLU6" in skipped[0].reason
