"""Placement policies: where each puts Q/DQ, the scheme, --keep-fp, the plan JSON, and what ONNX Runtime fuses."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from rescompile.errors import UsageError
from rescompile.export import run_onnx
from rescompile.graph.index import GraphIndex, node_name
from rescompile.quantize import Policy, QuantPlan, plan_qdq
from rescompile.quantize.registry import parse_policy
from rescompile.quantize.verify import verify_int8
from tests.models import assert_policy_places_qdq, ort_optimized, quantize, simplified

POLICIES = [Policy.TENSORRT, Policy.ONNXRUNTIME]


def test_onnxruntime_policy_quantizes_both_add_inputs_and_after_the_relu(tiny_onnx):
    plan = plan_qdq(tiny_onnx, Policy.ONNXRUNTIME)
    idx = GraphIndex.build(tiny_onnx.graph)
    assert len(plan.residual_adds) == 2
    for b in plan.residual_adds:
        assert sorted(b.quantized) == sorted([b.main, b.shortcut]) and b.fused and b.kernel.startswith("QLinearAdd")
        relu = idx.consumers[next(n.output[0] for n in tiny_onnx.graph.node if node_name(n) == b.add)][0][0]
        assert b.output_quantized == relu.output[0]  # the Q goes after the ReLU, not between Add and ReLU
        assert any(r.startswith("O4") for r in plan.activation(b.main).rules)
    quantized = {a.tensor for a in plan.activations}
    for n in tiny_onnx.graph.node:
        if n.op_type == "Conv" and idx.consumers[n.output[0]][0][0].op_type == "Relu":
            assert n.output[0] not in quantized  # nothing between Conv and its ReLU
    assert all(a.dtype == "uint8" and not a.symmetric for a in plan.activations)
    assert "logits" not in quantized  # QGemm emits float logits
    assert len(plan.biases) == len(plan.weights) == 7


def test_tensorrt_policy_scheme_and_pooling_scale(tiny_onnx):
    plan = plan_qdq(tiny_onnx, Policy.TENSORRT)
    assert all(a.dtype == "int8" and a.symmetric for a in plan.activations) and not plan.biases
    fc_input = next(a for a in plan.activations if any(c.startswith("/head/head.2/Gemm") for c in a.consumers))
    idx = GraphIndex.build(tiny_onnx.graph)
    # R7: Flatten and the average pool take their input's scale: the last block's ReLU output.
    assert idx.producer[fc_input.scale_from].op_type == "Relu" and any(r.startswith("R7") for r in fc_input.rules)


def test_onnxruntime_int8_is_close_to_fp32(tiny_onnx, tiny_data):
    _, int8 = quantize(tiny_onnx, Policy.ONNXRUNTIME)
    ref, got = run_onnx(tiny_onnx, tiny_data), run_onnx(int8, tiny_data)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.99 and not np.array_equal(ref, got)


@pytest.mark.parametrize("name", ["preact", "resnet_d"])
@pytest.mark.parametrize("policy", POLICIES)
def test_policies_on_preactivation_and_resnet_d(name, policy):
    assert_policy_places_qdq(simplified(name), policy)  # the dynamo export: tests/integration/test_model_families.py


@pytest.mark.parametrize("policy", POLICIES)
def test_keep_fp_globs_and_op_types(tiny_onnx, policy):
    plan, int8 = quantize(tiny_onnx, policy, keep_fp=("/blocks/blocks.1/*", "Gemm"))
    kept = set(plan.kept_fp)
    assert "/head/head.2/Gemm" in kept and any(k.startswith("/blocks/blocks.1/") for k in kept)
    weighted_q = {w.node for w in plan.weights}
    assert not weighted_q & kept and len(weighted_q) == 4  # stem, block 0: two convs + projection
    block1 = next(b for b in plan.residual_adds if b.add.startswith("/blocks/blocks.1/"))
    assert not block1.fused
    assert verify_int8(tiny_onnx, int8, plan).ok
    float_weights = [t for t in int8.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
    assert len(float_weights) == 3  # the kept Gemm and block 1's two convs keep float weights
    if policy == Policy.TENSORRT:
        assert block1.quantized == []  # a kept Add gets no shortcut Q/DQ


@pytest.mark.parametrize("policy", POLICIES)
def test_keep_first_last(tiny_onnx, policy, tmp_path):
    plan, int8 = quantize(tiny_onnx, policy, keep_first_last=True)
    assert plan.kept_fp == sorted(["/stem/stem.0/Conv", "/head/head.2/Gemm"])
    assert {w.node for w in plan.weights}.isdisjoint(plan.kept_fp) and len(plan.weights) == 5
    assert verify_int8(tiny_onnx, int8, plan).ok
    if policy == Policy.ONNXRUNTIME:
        ops = ort_optimized(int8, tmp_path)
        assert ops["QLinearConv"] == 5 and ops["QGemm"] == 0 and ops["Gemm"] == 1  # first and last run float
        assert plan.activation("input") is None


def test_keep_fp_pattern_matching_nothing_is_an_error(tiny_onnx):
    with pytest.raises(UsageError, match="matches no node"):
        plan_qdq(tiny_onnx, Policy.TENSORRT, keep_fp=("/no/such/layer*",))


@pytest.mark.parametrize("policy", POLICIES)
def test_plan_json_is_readable_and_round_trips(tiny_onnx, policy):
    plan = plan_qdq(tiny_onnx, policy)
    doc = json.loads(plan.to_json())
    assert doc["policy"] == policy and doc["scheme"]["activations"] and doc["rules"]
    nodes = {node_name(n): n for n in tiny_onnx.graph.node}
    for a in doc["activations"]:
        assert a["rules"] and all(r.split(":")[0] in doc["rules"] for r in a["rules"])  # every "why" is a known rule
        assert a["consumers"]
        for ref in a["consumers"]:
            name, _, i = ref.rpartition(":")
            assert nodes[name].input[int(i)] == a["tensor"]  # consumers are real edges
    for b in doc["residual_adds"]:
        assert {"add", "main", "shortcut", "quantized", "kernel", "rule"} <= set(b)
    again = QuantPlan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()


def test_plan_from_json_rejects_other_documents():
    with pytest.raises(UsageError):
        QuantPlan.from_json('{"not": "a plan"}')


@pytest.mark.parametrize("policy", POLICIES)
def test_identical_inputs_give_byte_identical_outputs(tiny_onnx, policy):
    first = [quantize(tiny_onnx, policy) for _ in range(2)]
    (p1, m1), (p2, m2) = first
    assert p1.to_json() == p2.to_json()
    assert m1.SerializeToString(deterministic=True) == m2.SerializeToString(deterministic=True)


def test_parse_policy_auto_follows_the_backend():
    assert parse_policy("auto", "tensorrt").name == Policy.TENSORRT
    assert parse_policy("auto", "onnxruntime").name == Policy.ONNXRUNTIME
    assert parse_policy("onnxruntime", "tensorrt").name == Policy.ONNXRUNTIME
    with pytest.raises(UsageError, match="unknown policy"):
        parse_policy("fastest", "onnxruntime")
    with pytest.raises(UsageError, match="unknown policy"):
        plan_qdq(onnx.ModelProto(), "fastest")


def test_resnet_d_pooled_shortcut_runs_int8_in_onnxruntime(tmp_path):
    _, int8 = quantize(simplified("resnet_d"), Policy.ONNXRUNTIME)
    ops = ort_optimized(int8, tmp_path)
    assert ops["QLinearAveragePool"] == 1 and ops["QLinearConv"] == 5 and ops["QLinearAdd"] == 1
    assert ops["Conv"] + ops["AveragePool"] + ops["Add"] + ops["DequantizeLinear"] == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_keeping_relus_moves_the_onnxruntime_q_before_them(tiny_onnx, policy):
    plan, int8 = quantize(tiny_onnx, policy, keep_fp=("Relu",))
    assert verify_int8(tiny_onnx, int8, plan).ok
    if policy == Policy.ONNXRUNTIME:
        # With the ReLU kept in float, the Conv/Add group closes at its own output.
        assert all(b.output_quantized == b.add_output for b in plan.residual_adds)


def test_the_registry_loads_each_builtin_from_its_module():
    from rescompile.quantize import catalog, policy_ort, policy_trt, registry

    assert tuple(registry._BUILTINS) == catalog.BUILTIN == (Policy.TENSORRT, Policy.ONNXRUNTIME)
    assert registry.get_policy("tensorrt") is policy_trt.POLICY and registry.get_policy("onnxruntime") is policy_ort.POLICY
    assert catalog.REGISTERED["tensorrt"] is policy_trt.POLICY


def _weight_peaks(model: onnx.ModelProto) -> list[int]:
    """The largest |stored value| of every INT8 weight initializer behind a DequantizeLinear."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        int(np.abs(inits[n.input[0]].astype(np.int16)).max())
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
    ]


def test_onnxruntime_weights_hold_seven_bits_tensorrt_eight(tiny_onnx):
    ort_plan, ort_model = quantize(tiny_onnx, Policy.ONNXRUNTIME)
    trt_plan, trt_model = quantize(tiny_onnx, Policy.TENSORRT)
    assert {w.bits for w in ort_plan.weights} == {7} and {w.bits for w in trt_plan.weights} == {8}
    assert max(_weight_peaks(ort_model)) == 63 and max(_weight_peaks(trt_model)) == 127
    # qdq_plan.json names the bits only where they are not the full 8: tensorrt plans read and write as before.
    assert all(w["bits"] == 7 for w in json.loads(ort_plan.to_json())["weights"])
    assert all("bits" not in w for w in json.loads(trt_plan.to_json())["weights"])
    assert [w.bits for w in QuantPlan.from_json(trt_plan.to_json()).weights] == [8] * len(trt_plan.weights)
    doc = json.loads(ort_plan.to_json())
    doc["weights"][0]["bits"] = 9
    with pytest.raises(UsageError, match="bits 9"):
        QuantPlan.from_dict(doc)


def _conv_relu_conv() -> onnx.ModelProto:
    """x (1 channel, values in [0, 1]) -> Conv 3x3 (8 filters of equal positive weights) -> Relu -> Conv 1x1 -> y."""
    h = onnx.helper
    w1 = np.full((8, 1, 3, 3), 0.5, np.float32)
    w1[:, :, 0, 0] = 0.6  # one weight per filter at the channel maximum, the rest just below it
    w2 = np.random.default_rng(0).standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2"),
    ]
    inits = [
        onnx.numpy_helper.from_array(w1, "w1"),
        onnx.numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        onnx.numpy_helper.from_array(w2, "w2"),
        onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
    ]
    g = h.make_graph(
        nodes,
        "sat",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 1, 8, 8])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4, 8, 8])],
        inits,
    )
    return onnx.helper.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_onnxruntime_fused_kernels_compute_what_the_qdq_graph_says(tmp_path):
    """O7: with 7-bit weights ONNX Runtime's fused QLinearConv equals the same Q/DQ graph run op by op.

    The input sits at the top of its uint8 range and every weight near the top of its channel's range: with
    full-range INT8 weights, two products 255 x ~127 overflow the int16 sums of the u8s8 kernels of x86 CPUs
    without VNNI, and the fused result drifts far from the Q/DQ arithmetic (on a CPU with VNNI it would not).
    """
    import onnxruntime as ort

    from rescompile.calibrate.collect import collect_stats
    from rescompile.calibrate.ranges import compute_ranges
    from rescompile.quantize.insert import insert_qdq

    model = _conv_relu_conv()
    x = np.random.default_rng(1).uniform(0.9, 1.0, (16, 1, 8, 8)).astype(np.float32)
    x[:, :, 0, 0] = 0.0  # the range starts at 0: zero point 0, the rest of the image near 255
    plan = plan_qdq(model, Policy.ONNXRUNTIME)
    int8 = insert_qdq(model, plan, compute_ranges(collect_stats(model, plan.calibrated_tensors, [x])))
    assert max(_weight_peaks(int8)) == 63
    assert ort_optimized(int8, tmp_path)["QLinearConv"] == 1  # conv1 runs as a fused u8s8 kernel (conv2's output is float)

    def run(level: ort.GraphOptimizationLevel) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.log_severity_level = 3
        sess = ort.InferenceSession(int8.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]

    fused, reference = run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    step = float(np.abs(reference).max()) / 100  # the output is float: compare against its magnitude
    assert np.abs(fused - reference).max() < step
