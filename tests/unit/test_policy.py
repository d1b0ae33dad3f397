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
