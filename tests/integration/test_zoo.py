"""The model zoo, and the conformance test of every registered placement policy over it.

Residual families beyond ResNet build under every policy in the registry, pass the proof, have
their residual Adds found, and stay close to FP32 (random weights, fixed seed, 3x32x32 inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from rescompile.errors import UsageError
from rescompile.graph.topology import block_map, find_residual_blocks
from rescompile.quantize import plan_qdq
from rescompile.quantize.registry import policy_names
from tests import zoo

SIZE = 32
BY_NAME = {e.name: e for e in zoo.SMALL}


@pytest.fixture(scope="session")
def zoo_onnx() -> Callable[[str], onnx.ModelProto]:
    """Each zoo model exported, parity-checked and simplified once per session."""
    cache: dict[str, bytes] = {}

    def get(name: str) -> onnx.ModelProto:
        if name not in cache:
            cache[name] = zoo.export_simplified(BY_NAME[name], SIZE).SerializeToString()
        return onnx.ModelProto.FromString(cache[name])

    return get


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_registered_policy_builds_the_zoo_model(name: str, zoo_onnx) -> None:  # type: ignore[no-untyped-def]
    entry, fp32 = BY_NAME[name], zoo_onnx(name)
    blocks = find_residual_blocks(fp32)
    assert len(blocks) == entry.residual_adds, [b.add for b in blocks]
    assert block_map(fp32)["residual_adds"] == entry.residual_adds  # what `rescompile inspect` names
    calib, val = zoo.zoo_inputs(SIZE, 8, 0), zoo.zoo_inputs(SIZE, 8, 1)
    assert {"tensorrt", "onnxruntime"} <= set(policy_names())
    for policy in policy_names():
        r = zoo.quantize_and_compare(fp32, policy, calib, val)
        assert r.report.ok, f"{policy}: " + "; ".join(map(str, r.report.violations[:3]))
        assert r.report.residual_adds == entry.residual_adds
        assert {b.add for b in r.plan.residual_adds} == {b.add for b in blocks}
        assert r.report.weight_dq > 0 and r.report.qdq_pairs > 0  # something was really quantized
        assert r.cosine > 0.99, f"{policy}: INT8 vs FP32 cosine {r.cosine:.4f}"


def test_linear_bottleneck_conv_output_is_quantized_for_the_next_conv_only(zoo_onnx) -> None:  # type: ignore[no-untyped-def]
    """MobileNetV2 (R4): a Conv with no activation feeding the next Conv gets a Q on its output; the
    main-branch Conv of each residual Add does not."""
    fp32 = zoo_onnx("mobilenet_v2")
    plan = plan_qdq(fp32, "tensorrt")
    producers = {o: n for n in fp32.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    conv_to_conv = [
        a.tensor
        for a in plan.activations
        if producers.get(a.tensor) is not None
        and producers[a.tensor].op_type == "Conv"
        and all(c.op_type == "Conv" for c in consumers[a.tensor])
    ]
    assert conv_to_conv, "expected linear-bottleneck Conv -> Conv edges to be quantized"
    quantized = {a.tensor for a in plan.activations}
    assert all(b.main not in quantized or b.main in {x.shortcut for x in plan.residual_adds} for b in plan.residual_adds)
    assert all(b.fused for b in plan.residual_adds)  # every main branch ends in a Conv


def test_se_gate_mul_is_not_a_residual_add_and_the_add_after_it_is(zoo_onnx) -> None:  # type: ignore[no-untyped-def]
    fp32 = zoo_onnx("se_before_add")
    blocks = find_residual_blocks(fp32)
    assert [b.main_producer_op for b in blocks] == ["Mul", "Mul"]  # the gated branch is the main branch
    assert all(b.shortcut_kind == "identity" for b in blocks)
    for b in plan_qdq(fp32, "tensorrt").residual_adds:
        assert b.quantized == [b.shortcut] and not b.fused and "Mul" in b.kernel


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("resnet_d", ["pooled-projection", "identity"]),
        ("preact", ["identity", "projection", "identity"]),
        ("two_conv_add", ["projection", "identity"]),
        ("add_chain", ["identity", "identity"]),
    ],
)
def test_shortcut_kinds(name: str, kinds: list[str], zoo_onnx) -> None:  # type: ignore[no-untyped-def]
    blocks = find_residual_blocks(zoo_onnx(name))
    assert [b.shortcut_kind for b in blocks] == kinds
    if name == "add_chain":  # the first Add's output is the second Add's shortcut
        assert blocks[1].shortcut == blocks[0].output and blocks[0].follower is None


def test_add_with_a_constant_input_is_not_residual() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])
    w = onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    b = onnx.numpy_helper.from_array(np.ones((1, 2, 1, 1), np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Add", ["c", "b"], ["y"], name="bias_add")],
        "g",
        [x],
        [y],
        [w, b],
    )
    assert find_residual_blocks(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])) == []


@pytest.mark.parametrize(("op", "domain"), [("If", ""), ("FusedConv", "com.microsoft")])
def test_unsupported_node_is_refused_naming_node_and_op(op: str, domain: str, zoo_onnx) -> None:  # type: ignore[no-untyped-def]
    fp32 = zoo_onnx("resnet_d")
    odd = helper.make_node(op, [fp32.graph.input[0].name], ["odd_out"], name="odd_node", domain=domain)
    fp32.graph.node.append(odd)
    with pytest.raises(UsageError, match=f"odd_node.*{op}"):
        plan_qdq(fp32, "tensorrt")


def test_cli_build_refuses_an_unsupported_op_with_exit_2(zoo_onnx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from rescompile.cli import app

    fp32 = zoo_onnx("resnet_d")
    fp32.graph.node.append(helper.make_node("FusedConv", [fp32.graph.input[0].name], ["odd_out"], name="odd_node", domain="com.microsoft"))
    fp32.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = tmp_path / "odd.onnx"
    onnx.save(fp32, str(path))
    np.save(tmp_path / "calib.npy", zoo.zoo_inputs(SIZE, 4, 0))
    np.savez(tmp_path / "val.npz", images=zoo.zoo_inputs(SIZE, 4, 1), labels=np.arange(4))
    result = CliRunner().invoke(
        app,
        [
            "build",
            str(path),
            "--calib",
            str(tmp_path / "calib.npy"),
            "--val",
            str(tmp_path / "val.npz"),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "odd_node" in result.output and "com.microsoft.FusedConv" in result.output and "Traceback" not in result.output


def test_main_branch_qdq_in_mobilenet_v2_fails_the_proof(zoo_onnx) -> None:  # type: ignore[no-untyped-def]
    """The relaxed R4 still rejects a Q/DQ on the main-branch Conv -> residual Add edge."""
    from rescompile.quantize.verify import verify_int8
    from tests.models import add_qdq

    fp32 = zoo_onnx("mobilenet_v2")
    r = zoo.quantize_and_compare(fp32, "tensorrt", zoo.zoo_inputs(SIZE, 4, 0), zoo.zoo_inputs(SIZE, 4, 1))
    block = r.plan.residual_adds[0]  # type: ignore[attr-defined]
    add = next(n for n in r.int8.graph.node if n.name == block.add)  # type: ignore[attr-defined]
    report = verify_int8(fp32, add_qdq(r.int8, block.add, list(add.input).index(block.main)), r.plan)
    rules = {(v.rule, v.node) for v in report.violations}
    assert ("residual", block.add) in rules and ("fusion", block.main_producer) in rules


def test_a_new_policy_is_one_registered_object(zoo_onnx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A policy registered by name is planned, proven and taken by the CLI without touching other modules."""
    from typer.testing import CliRunner

    from rescompile.cli import app
    from rescompile.quantize import catalog, registry
    from rescompile.quantize.policy_trt import TensorRTPolicy

    class StemInFP(TensorRTPolicy):
        name = "tensorrt-fp-stem"
        summary = "tensorrt, with the first weighted layer kept in FP"

        def plan(self, model, *, keep_fp=(), keep_first_last=False):  # type: ignore[no-untyped-def]
            from rescompile.quantize.policy import weighted_nodes

            plan = super().plan(model, keep_fp=(*keep_fp, weighted_nodes(model)[0].name), keep_first_last=keep_first_last)
            plan.policy = self.name
            return plan

    registry.register(StemInFP())
    try:
        assert "tensorrt-fp-stem" in policy_names()
        fp32 = zoo_onnx("resnet_d")
        r = zoo.quantize_and_compare(fp32, "tensorrt-fp-stem", zoo.zoo_inputs(SIZE, 4, 0), zoo.zoo_inputs(SIZE, 4, 1))
        assert r.report.ok and r.report.policy == "tensorrt-fp-stem" and len(r.plan.kept_fp) == 1  # type: ignore[attr-defined]
        onnx.save(fp32, str(tmp_path / "m.onnx"))
        np.save(tmp_path / "calib.npy", zoo.zoo_inputs(SIZE, 4, 0))
        m, ranges, out = str(tmp_path / "m.onnx"), str(tmp_path / "ranges.json"), str(tmp_path / "int8.onnx")
        runner = CliRunner()
        calib = runner.invoke(
            app, ["calibrate", m, "--calib", str(tmp_path / "calib.npy"), "--policy", "tensorrt-fp-stem", "--preset", "cifar", "-o", ranges]
        )
        assert calib.exit_code == 0, calib.output
        quant = runner.invoke(app, ["quantize", m, "--ranges", ranges, "--policy", "tensorrt-fp-stem", "--out", out])
        assert quant.exit_code == 0 and "tensorrt-fp-stem" in quant.output, quant.output
    finally:
        catalog.REGISTERED.pop("tensorrt-fp-stem", None)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "m.onnx"), "--policy", "no-such-policy"])
    assert result.exit_code == 2 and "tensorrt" in result.output and "onnxruntime" in result.output
