"""``--rest-precision fp16|fp32`` (issue 20 item 3) and the per-layer precision report; layer-info robustness (D17).

The typing pass is pure ONNX: its result is checked by ONNX type inference and run on ONNX Runtime
against the FP32-typed model. TensorRT's own choice per layer is read from inspector JSON.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from layerinfo_fixtures import PUBLISHED, blocks, load, without_formats
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import rescompile.engine.tensorrt as engine_trt
from rescompile.cli import app
from rescompile.engine.layerinfo import check_residual_fusion, fine_precision, layer_precisions
from rescompile.engine.mixed import KEEP_FP32, classify, type_rest_fp16
from rescompile.engine.settings import EngineOptions, InputSpec, compute_settings, parse_version, trtexec_command
from rescompile.engine.targets import get_target
from rescompile.engine.tensorrt import LayerInfoError, parse_layer_info
from rescompile.errors import UsageError


def _model() -> onnx.ModelProto:
    """Q/DQ Conv (quantized) -> ReLU -> GAP -> Flatten -> Gemm (kept FP) -> Softmax."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], name="dqw", axis=0),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(rng.integers(-127, 127, (4, 3, 3, 3)).astype(np.int8), "w"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(4, np.int8), "zw"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b"),
    ]
    return helper.make_model(helper.make_graph(nodes, "m", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_the_rule_types_the_rest_fp16_and_keeps_qdq_and_softmax() -> None:
    kind, why = classify(_model())
    assert {k for k, v in kind.items() if v == "quantized"} == {"qx", "dqx", "dqw", "conv", "relu"}
    assert {k for k, v in kind.items() if v == "fp16"} == {"gap", "flatten", "fc"}
    assert kind["softmax"] == "fp32" and why["softmax"] == KEEP_FP32["Softmax"]


def test_the_typed_model_is_valid_keeps_fp32_io_and_runs_close_to_fp32() -> None:
    model = _model()
    before = model.SerializeToString()
    typed = type_rest_fp16(model)
    assert model.SerializeToString() == before  # the input model (model.int8.onnx) is never touched
    g = typed.model.graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in g.output] == [TensorProto.FLOAT]
    inits = {t.name: t.data_type for t in g.initializer}
    assert inits["fc_w"] == inits["fc_b"] == TensorProto.FLOAT16 and inits["b"] == inits["sx"] == TensorProto.FLOAT
    casts = {(n.input[0], next(a.i for a in n.attribute if a.name == "to")) for n in g.node if n.op_type == "Cast"}
    assert casts == {("r", TensorProto.FLOAT16), ("logits", TensorProto.FLOAT)} and typed.casts == 2
    assert typed.fp16 == ("fc", "flatten", "gap") and "softmax" in typed.fp32 and "conv" not in typed.fp32
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref, got = _run(model, x), _run(typed.model, x)
    assert got.dtype == np.float32 and np.abs(ref - got).max() < 2e-3 and not np.array_equal(ref, got)


def test_a_graph_output_written_by_an_fp16_node_gets_a_cast_back() -> None:
    model = _model()
    del model.graph.node[-1]  # no Softmax: the Gemm (FP16) writes the output
    model.graph.output[0].name = "logits"
    typed = type_rest_fp16(model)
    (last,) = [n for n in typed.model.graph.node if "logits" in n.output]
    assert last.op_type == "Cast" and last.input[0] == "logits__fp16"
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert np.abs(_run(model, x) - _run(typed.model, x)).max() < 2e-2


def test_a_constant_beyond_the_fp16_range_keeps_its_node_fp32() -> None:
    model = _model()
    big = next(t for t in model.graph.initializer if t.name == "fc_b")
    big.CopyFrom(numpy_helper.from_array(np.full(5, 1e6, np.float32), "fc_b"))
    kind, why = classify(model)
    assert kind["fc"] == "fp32" and "FP16 range" in why["fc"]


def test_the_tiny_resnet_keeps_every_residual_block_quantized(tiny_int8_path: Path) -> None:
    model = onnx.load(str(tiny_int8_path))
    kind, _ = classify(model)
    adds = [n.name for n in model.graph.node if n.op_type == "Add"]
    assert adds and all(kind[a] == "quantized" for a in adds)
    x = np.random.default_rng(3).standard_normal((2, 1, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(type_rest_fp16(model).model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = ref.get_inputs()[0].name
    assert np.abs(ref.run(None, {name: x})[0] - sess.run(None, {name: x})[0]).max() < 5e-2


# Settings and the trtexec line.


def test_fp16_is_the_default_for_gpu_and_dla_and_fp32_can_be_chosen() -> None:
    spec = InputSpec("x", None, (3, 8, 8))
    gpu = compute_settings(get_target("gpu"), spec, EngineOptions(), parse_version("10.3.0"))
    assert gpu.rest_precision == "fp16" and any("typed FP16" in n for n in gpu.notes)
    fp32 = compute_settings(get_target("gpu"), spec, EngineOptions(rest_precision="fp32"), parse_version("10.3.0"))
    assert fp32.rest_precision == "fp32" and fp32.to_dict()["rest_precision"] == "fp32"
    with pytest.raises(UsageError, match="--rest-precision 'bf16'"):
        compute_settings(get_target("gpu"), spec, EngineOptions(rest_precision="bf16"), parse_version("10.3.0"))


def test_jetpack_5_trtexec_line_gets_fp16_for_the_rest() -> None:
    xavier = get_target("jetson-agx-xavier")
    s = compute_settings(xavier, InputSpec("x", 1, (3, 8, 8)), EngineOptions(), parse_version("8.5"))
    assert {"--int8", "--fp16"} <= set(trtexec_command(s, xavier, "m.onnx", "m.plan", dynamic=False))
    s32 = compute_settings(xavier, InputSpec("x", 1, (3, 8, 8)), EngineOptions(rest_precision="fp32"), parse_version("8.5"))
    assert "--fp16" not in trtexec_command(s32, xavier, "m.onnx", "m.plan", dynamic=False)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT installed: it would build")
@pytest.mark.parametrize("rest", ["fp16", "fp32"])
def test_the_printed_trtexec_line_builds_from_the_typed_copy_only_for_fp16(tiny_int8_path: Path, tmp_path: Path, rest: str) -> None:
    before = _sha(tiny_int8_path)
    args = ["engine", str(tiny_int8_path), "--target", "jetson-orin-nx", "--out", str(tmp_path), "--rest-precision", rest]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3 and _sha(tiny_int8_path) == before  # model.int8.onnx is never rewritten
    cmd = next(line for line in result.output.splitlines() if line.startswith("/usr/src/tensorrt/bin/trtexec"))
    typed = tmp_path / "model.engine.onnx"
    if rest == "fp16":
        assert f"--onnx={typed}" in cmd and typed.is_file()
        assert any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(str(typed)).graph.initializer) or "Cast" in {
            n.op_type for n in onnx.load(str(typed)).graph.node
        }
    else:
        assert f"--onnx={tiny_int8_path}" in cmd and not typed.exists()


def test_an_unknown_rest_precision_is_exit_2(tiny_int8_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["engine", str(tiny_int8_path), "--out", str(tmp_path), "--rest-precision", "int4"])
    assert result.exit_code == 2 and "--rest-precision" in result.output + str(result.stderr)


# Per-layer precision in reports.


@pytest.mark.parametrize(
    ("fmt", "want"),
    [
        ("Row major linear FP16 format", "fp16"),
        ("Half", "fp16"),
        ("Row major linear FP32", "fp32"),
        ("Float", "fp32"),
        ("Row major linear BFloat16 format", "bf16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("N/A due to dynamic shapes", "unknown"),
    ],
)
def test_fine_precision(fmt: str, want: str) -> None:
    assert fine_precision(fmt) == want


def test_each_layer_of_a_published_engine_gets_its_precision() -> None:
    doc = load(PUBLISHED[0])
    report = layer_precisions(doc)
    compute = [la for la in doc["Layers"] if la.get("LayerType") != "Reformat"]
    assert report["detailed"] and len(report["layers"]) == len(compute) and sum(report["counts"].values()) == len(compute)
    assert report["counts"].get("int8", 0) >= len(doc["_residual_adds"])
    assert {r["precision"] for r in report["layers"]} <= {"int8", "fp16", "fp32", "bf16", "other", "unknown"}


# D17: TacticName / weights as secondary evidence, never loosening the gate; the plan written first.


def test_an_int8_tactic_is_reported_but_the_add_stays_unknown() -> None:
    doc = without_formats(load(PUBLISHED[0]))
    for la in doc["Layers"]:
        la["TacticName"] = "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32"
        la["Weights"] = {"Type": "Int8", "Count": 9}
    report = check_residual_fusion(doc, blocks(doc))
    assert {a.status for a in report.adds} == {"unknown"} and not report.ok
    assert all("i8i8" in a.note and "weights are Int8" in a.note and "not used by the gate" in a.note for a in report.adds)


def test_unreadable_layer_information_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(LayerInfoError, match="not valid JSON") as err:
        parse_layer_info('{"Layers": [{"Name": "a\\q"}]}', tmp_path / "model.plan")
    assert err.value.exit_code == 2 and "--adopt" in (err.value.hint or "")
    assert parse_layer_info('{"Layers": []}', tmp_path / "model.plan") == {"Layers": []}


def test_the_plan_is_written_before_the_layer_information_is_read() -> None:
    tree = ast.parse(Path(engine_trt.__file__).read_text())
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}

    def first(func: str, prefix: str) -> int:
        return min(n.lineno for n in ast.walk(funcs[func]) if isinstance(n, ast.Call) and ast.unparse(n).startswith(prefix))

    assert first("build_engine", "write_bytes_atomic(plan_path, plan)") < first("build_engine", "_inspect_and_record(")
    inspect = "_inspect_and_record"
    assert first(inspect, "engine_layer_info(") < first(inspect, "parse_layer_info(") < first(inspect, "write_text_atomic(")
