"""DLA that is really DLA (issue 20 item 1; review D1, D2, D3, D9, D10), without a GPU.

The inspector documents follow the ``{ForeignNode[first...last]}`` naming TensorRT gives subgraph
layers (NVIDIA/TensorRT#3143 shows a DLA subgraph so, with ``... to nvm`` / ``... from nvm``
transfers around it; #4397 shows Myelin layers whose Metadata lists their members). They test our
reading of that shape, not TensorRT.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rescompile.engine.tensorrt as engine_trt
import rescompile.runtime.tensorrt_runner as runner_mod
from rescompile.engine.dla import dla_report
from rescompile.engine.implicit import strip_qdq
from rescompile.engine.layerinfo import check_residual_fusion
from rescompile.engine.settings import EngineOptions, InputSpec, compute_settings, flag_plan, parse_version, trtexec_command
from rescompile.engine.targets import get_target
from rescompile.errors import UsageError
from rescompile.graph.topology import ResidualBlock
from rescompile.runtime.tensorrt_runner import plan_dla_core
from rescompile.validate.gates import DLA_GATE, dla_gate

I8 = "Thirty-two wide channel vectorized row major Int8 format"
FP16 = "Row major linear FP16 format"
ORDER = ["conv1", "b0/conv1", "b0/conv2", "b0/Add", "b0/Relu", "b1/conv1", "b1/conv2", "b1/Add", "b1/Relu", "gap", "fc"]


def _block(i: int) -> ResidualBlock:
    return ResidualBlock(
        add=f"b{i}/Add",
        output="o",
        main="m",
        main_producer=f"b{i}/conv2",
        main_producer_op="Conv",
        main_depth=2,
        shortcut="s",
        shortcut_kind="identity",
        shortcut_nodes=(),
        block_input="x",
        follower="Relu",
        follower_node=f"b{i}/Relu",
    )


def _layer(name: str, fmt: str = I8, layer_type: str = "CaskConvolution", **extra: object) -> dict:
    return {"Name": name, "LayerType": layer_type, "Inputs": [{"Format/Datatype": fmt}], "Outputs": [{"Format/Datatype": fmt}], **extra}


def _dla_engine(span: str = "{ForeignNode[conv1...b1/Relu]}") -> dict:
    return {
        "Layers": [
            _layer("input to nvm", layer_type="Reformat"),
            _layer(span, layer_type="DLA"),
            _layer("output from nvm", layer_type="Reformat"),
            _layer("output copy finish", layer_type="Reformat"),
            _layer("gap + fc"),
        ]
    }


# D1: count layers on DLA and on the GPU, and gate on them.


def test_dla_layers_and_gpu_layers_are_counted() -> None:
    report = dla_report(_dla_engine())
    assert (report.dla_layers, report.gpu_layers, report.other_layers) == (1, 1, 3)
    assert report.dla_names == ("{ForeignNode[conv1...b1/Relu]}",) and report.to_dict()["dla_layers"] == 1


def test_a_dla_build_that_ran_entirely_on_the_gpu_fails_the_dla_gate() -> None:
    # What D1 describes: GPU_FALLBACK moved everything, the Adds are fused INT8 on the GPU.
    doc = {"Layers": [_layer("b0/conv2 + b0/Add + b0/Relu"), _layer("b1/conv2 + b1/Add + b1/Relu"), _layer("gap + fc")]}
    fusion = check_residual_fusion(doc, [_block(0), _block(1)], node_order=ORDER, dla=True)
    assert [a.status for a in fusion.adds] == ["gpu-fallback", "gpu-fallback"] and not fusion.ok
    gate = dla_gate(dla_report(doc), fusion)
    assert gate.name == DLA_GATE and not gate.passed and gate.value == 0.0 and gate.comparison == ">="
    assert "no layer runs on DLA" in gate.message and "fell back to the GPU: b0/Add, b1/Add" in gate.message


def test_a_dla_build_with_every_add_on_dla_passes_the_gate() -> None:
    doc = _dla_engine()
    fusion = check_residual_fusion(doc, [_block(0), _block(1)], node_order=ORDER, dla=True)
    gate = dla_gate(dla_report(doc), fusion)
    assert gate.passed and gate.value == 1.0 and gate.to_dict()["name"] == "engine_dla"


def test_one_add_fallen_back_fails_the_gate_even_with_dla_layers() -> None:
    doc = _dla_engine("{ForeignNode[conv1...b0/Relu]}")
    doc["Layers"].insert(2, _layer("b1/conv2 + b1/Add + b1/Relu"))
    fusion = check_residual_fusion(doc, [_block(0), _block(1)], node_order=ORDER, dla=True)
    gate = dla_gate(dla_report(doc), fusion)
    assert [a.status for a in fusion.adds] == ["dla-io-int8", "gpu-fallback"]
    assert not gate.passed and "1 residual Add(s) fell back to the GPU: b1/Add" in gate.message


def test_names_only_information_cannot_pass_the_dla_gate() -> None:
    doc = {"Layers": ["{ForeignNode[conv1...b1/Relu]}", "gap + fc"]}
    fusion = check_residual_fusion(doc, [_block(0)], node_order=ORDER, dla=True)
    assert not dla_gate(dla_report(doc), fusion).passed


def test_a_dla_subgraph_with_int8_io_is_not_called_fused() -> None:
    fusion = check_residual_fusion(_dla_engine(), [_block(0)], node_order=ORDER, dla=True)
    (add,) = fusion.adds
    assert add.status == "dla-io-int8" and "fused" not in add.status and add.ok


# D1 / D9: TensorRT versions without DLA are refused.


@pytest.mark.parametrize("version", ["10.8.0", "10.13.3", "10.16.1", "11.0.0", "11.3.0", "11.4.0"])
def test_dla_is_refused_where_nvidia_says_there_is_none(version: str) -> None:
    with pytest.raises(UsageError, match="no DLA support"):
        flag_plan(parse_version(version), dla=True)


@pytest.mark.parametrize(("version", "mode"), [("10.3.0", "implicit"), ("10.7.0", "implicit"), ("11.4.1", "strongly-typed")])
def test_dla_is_accepted_on_10_3_to_10_7_and_11_4_1(version: str, mode: str) -> None:
    assert flag_plan(parse_version(version), dla=True).dla_mode == mode


def test_11_4_1_dla_types_the_rest_fp16_and_sets_adjust_for_dla() -> None:
    spec = InputSpec("x", 1, (3, 8, 8))
    jp7 = get_target("jetson-agx-orin-jp7")
    s = compute_settings(jp7, spec, EngineOptions(dla_core=0), parse_version("11.4.1"))
    assert s.rest_precision == "fp16" and s.onnx_parser_flags == ("ADJUST_FOR_DLA",) and s.dla_mode == "strongly-typed"
    assert s.builder_flags == ("GPU_FALLBACK",)  # no FP16/INT8 flag: they are gone in 11.x
    with pytest.raises(UsageError, match="DLA runs only INT8 and FP16"):
        compute_settings(jp7, spec, EngineOptions(dla_core=0, rest_precision="fp32"), parse_version("11.4.1"))
    gpu = compute_settings(get_target("gpu"), spec, EngineOptions(), parse_version("11.4.1"))
    assert gpu.onnx_parser_flags == ()


def test_the_adjust_for_dla_call_is_reached_only_on_11x() -> None:
    src = Path(engine_trt.__file__).read_text()
    assert "_adjust_for_dla_trt11(trt, parser)" in src and "trt.OnnxParserFlag.ADJUST_FOR_DLA" in src


# D2: the DLA core is set on the runtime before every deserialization.


def _assigns_dla_core_before_deserialize(func: ast.FunctionDef) -> bool:
    lines = [n.lineno for n in ast.walk(func) if isinstance(n, ast.Attribute) and n.attr == "DLA_core" and isinstance(n.ctx, ast.Store)]
    deser = [n.lineno for n in ast.walk(func) if isinstance(n, ast.Attribute) and n.attr == "deserialize_cuda_engine"]
    return bool(lines) and bool(deser) and max(lines) < min(deser)


def _functions(path: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(Path(path).read_text())
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_deserialization_sets_the_dla_core_first() -> None:
    builder = _functions(engine_trt.__file__)  # type: ignore[arg-type]
    runtime_for = builder["runtime_for"]
    assert any(isinstance(n, ast.Attribute) and n.attr == "DLA_core" for n in ast.walk(runtime_for))
    # every function that deserializes builds its runtime with runtime_for, or sets DLA_core before
    for name, func in {**builder, **_functions(runner_mod.__file__)}.items():  # type: ignore[arg-type]
        if any(isinstance(n, ast.Attribute) and n.attr == "deserialize_cuda_engine" for n in ast.walk(func)):
            uses_helper = any(isinstance(n, ast.Name) and n.id == "runtime_for" for n in ast.walk(func))
            assert uses_helper or _assigns_dla_core_before_deserialize(func), name


def test_the_runner_reads_the_dla_core_from_the_sidecar() -> None:
    assert plan_dla_core({"settings": {"dla_core": 1}}) == 1
    assert plan_dla_core({"settings": {"dla_core": None}}) is None and plan_dla_core({}) is None


# D3: subgraph layers before Metadata; fused span endpoints.


def test_a_myelin_layer_whose_metadata_lists_the_add_is_not_judged_as_a_gpu_fused_layer() -> None:
    meta = "[ONNX Layer: b0/conv2]\x1e[ONNX Layer: b0/Add]\x1e[ONNX Layer: b0/Relu]"
    doc = {"Layers": [_layer("{ForeignNode[b0/conv1...b0/Relu]}", layer_type="Myelin", Metadata=meta)]}
    report = check_residual_fusion(doc, [_block(0)], node_order=ORDER)
    assert report.adds[0].status == "unfused" and "Myelin" in report.adds[0].note  # was fused-int8 through Metadata


def test_a_dla_subgraph_whose_metadata_lists_the_add_gets_a_dla_status() -> None:
    meta = "[ONNX Layer: b0/conv2]\x1e[ONNX Layer: b0/Add]"
    doc = {"Layers": [_layer("{ForeignNode[conv1...b0/Relu]}", FP16, layer_type="DLA", Metadata=meta)]}
    report = check_residual_fusion(doc, [_block(0)], node_order=ORDER, dla=True)
    assert report.adds[0].status == "dla-io-float"


def test_a_span_endpoint_that_is_itself_a_fused_name_is_split() -> None:
    doc = {"Layers": [_layer("{ForeignNode[conv1 + b0/conv1...b0/Relu + b1/conv1]}", layer_type="DLA"), _layer("fc")]}
    report = check_residual_fusion(doc, [_block(0), _block(1)], node_order=ORDER, dla=True)
    assert [a.status for a in report.adds] == ["dla-io-int8", "not-found"]  # was not-found for both


# D10: equal implicit ranges on both inputs of a residual Add.


def _residual_qdq() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    w = np.ones((2, 2, 1, 1), np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "sw", "z"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv2"),
        helper.make_node("Add", ["c", "xd"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "sr", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "sr", "z"], ["rd"]),
        helper.make_node("Identity", ["rd"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "sx"),
        numpy_helper.from_array(np.array(0.25, np.float32), "sr"),
        numpy_helper.from_array(np.array(0.01, np.float32), "sw"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(w, "w"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_both_inputs_of_a_residual_add_get_the_same_range_for_dla() -> None:
    out = strip_qdq(_residual_qdq())
    assert out.ranges["c"] == out.ranges["x"] == pytest.approx(63.5)  # the main-branch Conv output had none
    assert out.ranges["a"] == out.ranges["r"] == pytest.approx(31.75)  # the Add's output: its ReLU's range
    assert out.equalized_adds == ("add",)


def test_the_trtexec_line_for_10x_dla_still_uses_implicit_int8() -> None:
    spec = InputSpec("x", 1, (3, 8, 8))
    s = compute_settings(get_target("jetson-agx-orin"), spec, EngineOptions(dla_core=1), parse_version("10.3.0"))
    cmd = trtexec_command(s, get_target("jetson-agx-orin"), "m.onnx", "m.plan", dynamic=False, calib_cache="c")
    assert {"--int8", "--fp16", "--allowGPUFallback", "--useDLACore=1", "--calib=c"} <= set(cmd)
