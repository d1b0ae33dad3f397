import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from rescompile.errors import ParityError, UsageError
from rescompile.export import ExportConfig, check_parity, export_onnx, run_onnx, run_torch
from rescompile.simplify import fold_batchnorm, simplify

SHAPE = (1, 16, 16)


def test_export_has_named_io_dynamic_batch_and_parity(tiny_module):
    model, parity = export_onnx(tiny_module, SHAPE, ExportConfig())
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert parity.passed and parity.max_abs_error < 1e-4
    x = np.random.default_rng(0).standard_normal((7, *SHAPE)).astype(np.float32)  # another batch size
    np.testing.assert_allclose(run_onnx(model, x), run_torch(tiny_module, x), atol=1e-4)


def test_export_rejects_old_opset(tiny_module):
    with pytest.raises(UsageError, match="opset"):
        export_onnx(tiny_module, SHAPE, ExportConfig(opset=13))


def test_parity_error_names_stage():
    with pytest.raises(ParityError, match="simplify"):
        check_parity(np.zeros((2, 3)), np.ones((2, 3)), 1e-4, 1e-3, "simplify")


def _conv_bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    for name, val in (
        ("g", rng.uniform(0.5, 1.5, 4)),
        ("b", rng.uniform(-1, 1, 4)),
        ("m", rng.uniform(-1, 1, 4)),
        ("v", rng.uniform(0.5, 2, 4)),
    ):
        inits.append(numpy_helper.from_array(val.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_batchnorm_removes_bn_and_keeps_numbers():
    model = _conv_bn_model()
    folded, n = fold_batchnorm(model)
    assert n == 1
    assert [node.op_type for node in folded.graph.node] == ["Conv", "Relu"]
    assert len(folded.graph.node[0].input) == 3  # a bias was added
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(folded, x), run_onnx(model, x), atol=1e-5)


def test_simplify_removes_batchnorm_and_checks_parity():
    model = _conv_bn_model()
    result = simplify(model, (2, 8, 8))
    assert result.batchnorms_folded == 1
    assert "BatchNormalization" not in {n.op_type for n in result.model.graph.node}
    assert result.max_abs_error < 1e-4


def test_simplify_without_onnxsim_still_folds():
    from rescompile.simplify import SimplifyConfig

    result = simplify(_conv_bn_model(), (2, 8, 8), SimplifyConfig(use_onnxsim=False))
    assert result.batchnorms_folded == 1 and result.nodes_after == 2


def test_export_probe_is_simplify_reference(tiny_module):
    model, parity = export_onnx(tiny_module, SHAPE, ExportConfig())
    assert parity.probe is not None
    inputs, outputs = parity.probe
    np.testing.assert_array_equal(outputs, run_onnx(model, inputs))  # the exported model's own outputs, bit for bit
    assert simplify(model, SHAPE, probe=parity.probe).max_abs_error == simplify(model, SHAPE).max_abs_error
    with pytest.raises(ParityError, match="simplify"):  # the probe is the reference: the model is not run again
        simplify(model, SHAPE, probe=(inputs, outputs + 1.0))
    assert simplify(model, SHAPE, probe=(inputs + 1.0, outputs + 1.0)).max_abs_error < 1e-4  # other inputs: run again


def test_simplified_bytes_are_the_saved_model(tmp_path):
    from rescompile.buildfolder import SIMPLIFIED_ONNX
    from rescompile.pipeline.stages import Simplified

    result = simplify(_conv_bn_model(), (2, 8, 8))
    assert result.data == result.model.SerializeToString(deterministic=True)
    Simplified(result).write(tmp_path)
    assert (tmp_path / SIMPLIFIED_ONNX).read_bytes() == result.data
