import numpy as np
import onnx
import pytest

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.export import run_onnx
from rescompile.quantize import Policy, insert_qdq, plan_qdq
from rescompile.quantize.insert import quantize_weight
from rescompile.quantize.verify import verify_int8


@pytest.fixture(scope="module")
def int8(tiny_onnx, tiny_data):
    plan = plan_qdq(tiny_onnx, Policy.TENSORRT)
    stats = collect_stats(tiny_onnx, plan.calibrated_tensors, [tiny_data[:12], tiny_data[12:]])
    return plan, insert_qdq(tiny_onnx, plan, compute_ranges(stats, "max"))


def test_tensorrt_policy_quantizes_shortcut_not_main_branch(tiny_onnx):
    plan = plan_qdq(tiny_onnx, Policy.TENSORRT)
    assert len(plan.residual_adds) == 2
    for block in plan.residual_adds:
        assert block.quantized == [block.shortcut]
        assert plan.activation(block.main) is None
        assert block.fused


def test_fan_out_gets_one_shared_qdq(tiny_onnx):
    plan = plan_qdq(tiny_onnx, Policy.TENSORRT)
    identity = plan.residual_adds[1]
    q = plan.activation(identity.shortcut)
    assert q is not None and len(q.consumers) == 2  # next block's conv1 and the Add
    assert any(r.startswith("R6") for r in q.rules)


def test_int8_model_passes_checker_runs_and_is_close(tiny_onnx, tiny_data, int8):
    plan, model = int8
    onnx.checker.check_model(model)
    ref, got = run_onnx(tiny_onnx, tiny_data), run_onnx(model, tiny_data)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.99
    assert not np.array_equal(ref, got)  # quantization really happened


def test_weights_stored_int8_per_channel(int8):
    _, model = int8
    inits = {t.name: t for t in model.graph.initializer}
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4]
    assert len(int8_weights) == 6  # stem, 2 convs in each of 2 blocks, projection
    for t in int8_weights:
        scale = inits[t.name.replace("_quantized", "_scale")]
        assert list(scale.dims) == [t.dims[0]]
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 for t in model.graph.initializer)


def test_verify_accepts_own_output(tiny_onnx, int8):
    plan, model = int8
    report = verify_int8(tiny_onnx, model, plan)
    assert report.ok, report.violations
    assert report.residual_adds == 2 and report.weight_dq == 7  # 6 convs + the fc layer


def test_insert_is_byte_identical(tiny_onnx, tiny_data, int8):
    plan, model = int8
    stats = collect_stats(tiny_onnx, plan.calibrated_tensors, [tiny_data[:12], tiny_data[12:]])
    again = insert_qdq(tiny_onnx, plan, compute_ranges(stats, "max"))
    assert again.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)


def test_quantize_weight_symmetric_per_channel():
    w = np.array([[1.0, -2.0], [0.5, 0.25]], np.float32).reshape(2, 2, 1, 1)
    q, scale = quantize_weight(w, 0)
    np.testing.assert_allclose(scale, [2 / 127, 0.5 / 127], rtol=1e-6)
    assert q.dtype == np.int8 and q.reshape(2, 2).tolist() == [[64, -127], [127, 64]]


def test_int8_file_is_about_4x_smaller():
    from rescompile.models.resnet_cifar import cifar_resnet
    from tests.models import quick_export

    fp32 = quick_export(cifar_resnet("resnet20", 10, 1), (1, 16, 16))
    for policy in (Policy.TENSORRT, Policy.ONNXRUNTIME):
        plan = plan_qdq(fp32, policy)
        x = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
        model = insert_qdq(fp32, plan, compute_ranges(collect_stats(fp32, plan.calibrated_tensors, [x])))
        ratio = len(fp32.SerializeToString()) / len(model.SerializeToString())
        assert 3.3 < ratio < 4.0, (policy, ratio)


def test_bias_int32_scale_is_input_times_weight_scale():
    from rescompile.quantize.insert import quantize_bias

    q, scale = quantize_bias(np.array([0.5, -1.0, 0.0], np.float32), 0.1, np.array([0.01, 0.02, 0.5], np.float32))
    np.testing.assert_allclose(scale, [0.001, 0.002, 0.05], rtol=1e-6)
    assert q.dtype == np.int32 and q.tolist() == [500, -500, 0]


def test_new_names_never_collide_with_the_graph(tiny_onnx, tiny_data):
    model = onnx.ModelProto.FromString(tiny_onnx.SerializeToString())
    # Take the name the shared Q/DQ of the graph input would get.
    model.graph.node[0].name = "input_QuantizeLinear"
    plan = plan_qdq(model, Policy.ONNXRUNTIME)
    stats = collect_stats(model, plan.calibrated_tensors, [tiny_data])
    out = insert_qdq(model, plan, compute_ranges(stats, "max"))
    names = [n.name for n in out.graph.node]
    assert len(names) == len(set(names)) and "input_QuantizeLinear_1" in names
    assert verify_int8(model, out, plan).ok


def test_plan_that_does_not_fit_the_model_is_a_usage_error(tiny_onnx, int8):
    from rescompile.errors import UsageError

    plan, _ = int8
    stats = collect_stats(tiny_onnx, plan.calibrated_tensors, [np.zeros((2, 1, 16, 16), np.float32)])
    ranges = compute_ranges(stats, "max")
    del ranges[plan.calibrated_tensors[0]]
    with pytest.raises(UsageError, match="no calibrated range"):
        insert_qdq(tiny_onnx, plan, ranges)


def test_quantize_weight_in_seven_bits():
    w = np.array([[0.9, -2.0], [0.5, 0.3]], np.float32).reshape(2, 2, 1, 1)
    q, scale = quantize_weight(w, 0, bits=7)
    np.testing.assert_allclose(scale, [2 / 63, 0.5 / 63], rtol=1e-6)
    assert q.dtype == np.int8 and q.reshape(2, 2).tolist() == [[28, -63], [63, 38]]


def _unknown_field(number: int, value: int) -> bytes:
    """A varint field ``number`` = ``value`` in protobuf wire format (a field this onnx does not know)."""
    out, key = b"", number << 3
    for v in (key, value):
        while v > 0x7F:
            out += bytes([v & 0x7F | 0x80])
            v >>= 7
        out += bytes([v])
    return out


def _without_nodes_and_initializers(model: onnx.ModelProto) -> bytes:
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    del copy.graph.node[:]
    del copy.graph.initializer[:]
    return copy.SerializeToString(deterministic=True)


@pytest.mark.parametrize("unknown", [False, True])
def test_insert_keeps_every_other_field_and_leaves_the_source_alone(tiny_onnx, tiny_data, int8, unknown):
    plan, _ = int8
    model = onnx.ModelProto.FromString(tiny_onnx.SerializeToString() + (_unknown_field(900, 7) if unknown else b""))
    model.doc_string, model.graph.doc_string = "the model", "the graph"
    onnx.helper.set_model_props(model, {"author": "tests"})
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
    before = model.SerializeToString(deterministic=True)
    stats = collect_stats(tiny_onnx, plan.calibrated_tensors, [tiny_data])
    out = insert_qdq(model, plan, compute_ranges(stats, "max"))
    assert model.SerializeToString(deterministic=True) == before
    assert _without_nodes_and_initializers(out) == _without_nodes_and_initializers(model)
    assert (_unknown_field(900, 7) in out.SerializeToString()) == unknown
    source = {t.name: t.SerializeToString() for t in model.graph.initializer}
    kept = [t.name for t in out.graph.initializer if t.name in source]
    assert kept and kept == [n for n in source if n in kept]  # the source's order, before the new ones
    assert all(out.graph.initializer[i].SerializeToString() == source[n] for i, n in enumerate(kept))
    assert len(out.graph.initializer) > len(kept)
