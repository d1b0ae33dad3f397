"""ONNX inputs that are not what build expects: below opset 13 (converted or refused), already quantized (refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from rescompile.errors import UsageError
from rescompile.export import parity_inputs, run_onnx
from rescompile.models.onnx_source import MIN_OPSET, default_opset, describe_onnx, free_batch, refuse_quantized, upgrade_opset
from tests.models import TINY_SHAPE, tiny_resnet


@pytest.fixture(scope="module")
def opset11_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ResNet exported by torch.onnx (TorchScript exporter) at opset 11, BatchNorm not folded."""
    path = tmp_path_factory.mktemp("op11") / "tiny_op11.onnx"
    torch.onnx.export(
        tiny_resnet(),
        torch.zeros(1, *TINY_SHAPE),
        str(path),
        opset_version=11,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        training=torch.onnx.TrainingMode.EVAL,
        do_constant_folding=False,
    )
    return path


def test_opset11_export_is_converted_to_13_and_matches(opset11_path: Path):
    model = onnx.load(str(opset11_path))
    assert default_opset(model) == 11
    converted, conversion = upgrade_opset(model, opset11_path, TINY_SHAPE)
    assert conversion is not None and (conversion.from_opset, conversion.to_opset) == (11, MIN_OPSET)
    assert default_opset(converted) == MIN_OPSET
    x = parity_inputs(TINY_SHAPE, 3, seed=5)
    np.testing.assert_allclose(run_onnx(converted, x), run_onnx(model, x), atol=1e-5)
    assert conversion.max_abs_error <= 1e-4


def test_opset13_and_above_is_left_alone(tiny_onnx: onnx.ModelProto):
    same, conversion = upgrade_opset(tiny_onnx, Path("tiny.onnx"), TINY_SHAPE)
    assert conversion is None and same is tiny_onnx


def _single_node_model(opset: int, node: onnx.NodeProto, out_shape: list) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", *TINY_SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", opset)])


def test_a_graph_the_converter_cannot_convert_is_refused():
    # onnx's Scan 8 -> 9 adapter refuses a Scan whose first input (sequence_lens) is set
    body = helper.make_graph([], "body", [], [])
    model = _single_node_model(8, helper.make_node("Scan", ["input"], ["y"], num_scan_inputs=1, body=body), ["n", *TINY_SHAPE])
    with pytest.raises(UsageError, match="opset 8.*version converter cannot convert") as exc:
        upgrade_opset(model, Path("scan.onnx"), TINY_SHAPE)
    assert "opset_version" in (exc.value.hint or "")


def test_a_conversion_that_changes_the_outputs_is_refused():
    # onnx's converter turns a linear Upsample (opset 9) into a Resize without coordinate_transformation_mode
    # "asymmetric": on ONNX Runtime the converted graph interpolates differently (a real converter gap)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", *TINY_SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 32, 32])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Upsample", ["input", "scales"], ["y"], mode="linear")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [scales]), opset_imports=[helper.make_opsetid("", 9)])
    with pytest.raises(UsageError, match="converted to opset 13 changes the outputs"):
        upgrade_opset(model, Path("upsample.onnx"), TINY_SHAPE)


def test_an_already_quantized_graph_is_refused_by_the_build_path(tiny_int8_path: Path):
    with pytest.raises(UsageError, match="already quantized.*DequantizeLinear") as exc:
        describe_onnx(tiny_int8_path)
    for command in ("rescompile validate", "rescompile inspect", "rescompile engine"):
        assert command in (exc.value.hint or "")
    describe_onnx(tiny_int8_path, require_residual=False)  # validate/inspect/calibrate still read it


@pytest.mark.parametrize("op", ["QLinearConv", "ConvInteger", "MatMulInteger"])
def test_operator_oriented_quantized_ops_are_refused(op: str):
    model = _single_node_model(13, helper.make_node(op, ["input"], ["y"]), ["n", *TINY_SHAPE])
    with pytest.raises(UsageError, match=op):
        refuse_quantized(model, Path("q.onnx"))


def test_a_fixed_batch_export_is_made_dynamic_and_matches(tmp_path: Path):
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(tiny_resnet(), torch.zeros(1, *TINY_SHAPE), str(path), dynamo=False)  # no dynamic_axes: batch 1
    model = onnx.load(str(path))
    freed, info = free_batch(model, path, TINY_SHAPE)
    assert info is not None and info.fixed == 1 and info.max_abs_error <= 1e-4
    x = parity_inputs(TINY_SHAPE, 5, seed=2)
    expected = np.concatenate([run_onnx(model, x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(run_onnx(freed, x), expected, atol=1e-5)


def test_a_dynamic_batch_is_left_alone(tiny_onnx: onnx.ModelProto):
    same, info = free_batch(tiny_onnx, Path("tiny.onnx"), TINY_SHAPE)
    assert info is None and same is tiny_onnx


def test_a_graph_that_depends_on_its_fixed_batch_is_refused():
    # Reshape to [1, 256] hard-codes the batch: two samples cannot pass
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *TINY_SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 256])
    node = helper.make_node("Reshape", ["input", "shape"], ["y"])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [shape]), opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UsageError, match="fixed batch size of 1") as exc:
        free_batch(model, Path("flat.onnx"), TINY_SHAPE)
    assert "dynamic_axes" in (exc.value.hint or "")


def test_the_model_read_to_describe_it_is_the_one_exported(tiny_onnx: onnx.ModelProto, tmp_path: Path, monkeypatch):
    """A build reads a user's ONNX file once: describing it (load_model) keeps the model for the export stage."""
    from rescompile.export import ExportConfig
    from rescompile.models import load_model
    from rescompile.pipeline import stages

    path = tmp_path / "m.onnx"
    onnx.save(tiny_onnx, str(path))
    reads = []
    load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda f, *a, **k: reads.append(str(f)) or load(f, *a, **k))
    loaded = load_model(str(path))
    exported = stages.export(loaded, ExportConfig())
    assert reads == [str(path)] and loaded.onnx_model is None  # read once, and not kept past the export
    assert exported.model.graph == tiny_onnx.graph
