"""The block picture of report.html: block records from real INT8 models and plans, and their drawing.

The demo model (the shipped resnet20 checkpoint) and torchvision-style ResNets (bottleneck blocks,
downsample shortcuts) are quantized here under both policies; each record is checked against the
INT8 graph itself (a Q/DQ drawn on an edge is a QuantizeLinear/DequantizeLinear pair there) and
against the plan (its rule codes). The engine-layer mapping runs on an engine-inspector dump NVIDIA
published (tests/layerinfo_fixtures.py).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.export import ExportConfig, export_onnx
from rescompile.graph.topology import find_residual_blocks
from rescompile.models import load_model
from rescompile.quantize import insert_qdq, plan_qdq
from rescompile.report.blocks import BlockPicture, block_label, describe_blocks, engine_layers, kept_reasons
from rescompile.report.blocks_svg import KEPT, blocks_section
from rescompile.report.write import read_block_picture
from rescompile.simplify import simplify
from tests import zoo
from tests.layerinfo_fixtures import FIXTURES, PUBLISHED, load

BLOCK_SVG = re.compile(r'<svg class="block" id="block-(\d+)"')


def _quantize(fp32: onnx.ModelProto, policy: str, **keep: Any) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 model and plan (as qdq_plan.json holds it); ranges from a few random inputs: only placement matters here."""
    plan = plan_qdq(fp32, policy, **keep)
    dims = [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).standard_normal((4, *dims)).astype(np.float32)
    ranges = compute_ranges(collect_stats(fp32, plan.calibrated_tensors, [x]), "max")
    return insert_qdq(fp32, plan, ranges), json.loads(plan.to_json())


@pytest.fixture(scope="module")
def demo_fp32() -> onnx.ModelProto:
    loaded = load_model("demo")
    model, _ = export_onnx(loaded.module, loaded.input_shape, ExportConfig())
    return simplify(model, loaded.input_shape).model


@pytest.fixture(scope="module")
def demo(demo_fp32: onnx.ModelProto) -> dict[str, tuple[onnx.ModelProto, dict[str, Any]]]:
    return {p: _quantize(demo_fp32, p) for p in ("tensorrt", "onnxruntime")}


def _q_tensors(int8: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in int8.graph.node if n.op_type == "QuantizeLinear"}


def _reads_dq_of(int8: onnx.ModelProto, node: str, tensor: str) -> bool:
    """``node`` reads ``tensor`` through a Q/DQ pair in the INT8 graph."""
    prod = {o: n for n in int8.graph.node for o in n.output}
    n = next(x for x in int8.graph.node if x.name == node)
    for i in n.input:
        dq = prod.get(i)
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] == tensor:
                return True
    return False


def test_demo_tensorrt_blocks_match_plan_and_graph(demo_fp32, demo):
    int8, plan = demo["tensorrt"]
    pic = describe_blocks(int8, plan)
    fp_blocks = find_residual_blocks(demo_fp32)
    assert len(pic.blocks) == len(plan["residual_adds"]) == len(fp_blocks) == 9
    assert [b.add for b in pic.blocks] == [b.add for b in fp_blocks]
    assert [b.label for b in pic.blocks] == [f"layers.{i}" for i in range(9)]
    assert [b.shortcut_kind for b in pic.blocks] == [b.shortcut_kind for b in fp_blocks]
    assert sum(b.shortcut_kind == "projection" for b in pic.blocks) == 2
    quantized = _q_tensors(int8)
    for b, fb in zip(pic.blocks, fp_blocks, strict=True):
        assert tuple(o.op for o in b.main) == fb.main_ops == ("Conv", "Relu", "Conv")
        assert tuple(o.node for o in b.shortcut) == fb.shortcut_nodes
        assert [o.op for o in b.shortcut] == (["Conv"] if b.shortcut_kind == "projection" else [])
        # R5: the shortcut edge into the Add is quantized, the main-branch edge is not.
        assert b.main_into_add is None and not _reads_dq_of(int8, b.add, fb.main)
        assert b.shortcut_into_add is not None and "R5" in b.shortcut_into_add.codes
        assert _reads_dq_of(int8, b.add, b.shortcut_into_add.tensor)
        assert b.main[0].qdq_in is not None and "R4" in b.main[0].qdq_in.codes  # R4: input of the first Conv
        assert b.main[1].qdq_in is None and b.main[2].qdq_in is not None  # nothing between Conv and ReLU
        for where, m in b.marks():
            assert m.tensor in quantized, where  # every drawn Q/DQ is in the graph
            assert m.codes and all(c.startswith("R") for c in m.codes)
        assert [o.precision for o in b.main] == ["int8", "float", "int8"]
        assert all(o.weight_rule and o.weight_rule.startswith("R2") for o in b.main if o.op == "Conv")
        assert b.fused and b.kernel == "Conv+Add+ReLU fused INT8 kernel"
        assert (fb.main_conv, b.add, fb.follower_node) in [f.nodes for f in b.fusions]
    identity = next(b for b in pic.blocks if b.shortcut_kind == "identity")
    assert identity.shortcut_into_add.tensor == identity.block_input  # type: ignore[union-attr]
    assert identity.shortcut_into_add.consumers == 2  # type: ignore[union-attr]  # R6: one pair, Conv and Add read it
    projection = next(b for b in pic.blocks if b.shortcut_kind == "projection")
    assert projection.shortcut_into_add.tensor == projection.shortcut[-1].node.replace("/Conv", "/Conv_output_0")  # type: ignore[union-attr]


def test_demo_onnxruntime_blocks_quantize_both_add_inputs_and_fuse_qlinear_kernels(demo):
    int8, plan = demo["onnxruntime"]
    pic = describe_blocks(int8, plan)
    assert len(pic.blocks) == len(plan["residual_adds"]) == 9 and pic.policy == "onnxruntime"
    for b in pic.blocks:
        assert b.main_into_add is not None and b.shortcut_into_add is not None  # O4
        assert "O4" in b.main_into_add.codes and "O4" in b.shortcut_into_add.codes
        assert b.output_mark is not None and "O3" in b.output_mark.codes  # the Q after the Add's ReLU
        kernels = {f.kernel.split(" ")[0] for f in b.fusions}
        assert kernels == {"QLinearAdd", "QLinearConv"}
        assert all(m.codes and all(c.startswith("O") for c in m.codes) for _, m in b.marks())
        assert all(o.weight_rule and o.weight_rule.startswith("O7") for o in (*b.main, *b.shortcut) if o.op == "Conv")


def test_kept_fp_layers_show_as_fp_with_their_reason(demo_fp32):
    kept_conv = "/layers/layers.4/conv2/Conv"
    int8, plan = _quantize(demo_fp32, "tensorrt", keep_fp=(kept_conv,), keep_first_last=True)
    why = kept_reasons(int8, plan["kept_fp"], keep_fp=(kept_conv,), keep_first_last=True, fallback=["/fc/Gemm"])
    assert why == {kept_conv: "keep-fp", "/conv1/Conv": "keep-first-last", "/fc/Gemm": "keep-first-last, auto-fallback"}
    pic = describe_blocks(int8, plan, kept_why=why)
    block = next(b for b in pic.blocks if b.label == "layers.4")
    conv = block.main[-1]
    assert conv.node == kept_conv and conv.precision == "fp" and conv.kept == "keep-fp" and conv.qdq_in is None
    assert not block.fused and block.kernel == "not fused: kept in FP"
    assert all(block.add not in f.nodes for f in block.fusions)
    assert [o.precision for o in next(b for b in pic.blocks if b.label == "layers.5").main] == ["int8", "float", "int8"]
    assert pic.kept_outside == (("/conv1/Conv", "Conv", "keep-first-last"), ("/fc/Gemm", "Gemm", "keep-first-last, auto-fallback"))
    html = blocks_section(pic)
    row = BLOCK_SVG.split(html)  # [before, "0", row 0, "1", row 1, ...]
    kept_row = row[2 + 2 * pic.blocks.index(block)]
    assert f'fill="{KEPT}"' in kept_row and "Conv 3x3 FP" in kept_row and "keep-fp; R8" in kept_row
    assert f'fill="{KEPT}"' not in row[2]
    assert "keep-first-last" in html and "<code>R8</code>" in html


def _renamed(int8: onnx.ModelProto, plan: dict[str, Any], names: dict[str, str]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The same graph and plan with some nodes renamed (as another exporter would have named them)."""
    out = onnx.ModelProto()
    out.CopyFrom(int8)
    for n in out.graph.node:
        n.name = names.get(n.name, n.name)
    text = json.dumps(plan)
    for old, new in names.items():
        text = text.replace(json.dumps(old), json.dumps(new)).replace(json.dumps(old)[:-1] + ":", json.dumps(new)[:-1] + ":")
    return out, json.loads(text)


def test_engine_layer_of_each_add_from_published_layer_information(demo):
    """The demo's first eight Adds and their main Convs renamed like torchvision resnet18's ONNX export
    (``Add_42``, ``Conv_34``...): the engine layers NVIDIA's TREx resnet18 dump shows for them."""
    doc = load(PUBLISHED[0])
    int8, plan = demo["tensorrt"]
    blocks = find_residual_blocks(int8)
    names: dict[str, str] = {}
    for b, (add, conv) in zip(blocks, doc["_residual_adds"].items(), strict=False):
        names |= {b.add: add, b.main_producer: conv}
    int8, plan = _renamed(int8, plan, names)
    engine = engine_layers((FIXTURES / PUBLISHED[0]).read_text(), int8)
    pic = describe_blocks(int8, plan, engine=engine)
    by_layer = {la["Name"]: la for la in doc["Layers"]}
    for b, (add, conv) in zip(pic.blocks, doc["_residual_adds"].items(), strict=False):
        assert b.add == add and b.engine is not None
        assert b.engine.status == "fused-int8" and b.engine.name in by_layer
        parts = b.engine.name.split(" + ")  # "layer1.0.conv2.weight + QuantizeLinear_32 + Conv_34 + Add_42 + Relu_43"
        assert add in parts and conv in parts
    assert pic.blocks[8].engine is not None and pic.blocks[8].engine.status == "not-found"  # resnet18 has 8 Adds
    html = blocks_section(pic)
    assert "layer1.0.conv2.weight + QuantizeLinear_32 + Conv_34 + Add_42 + Relu_43" in html
    assert html.count('class="engine"') == 9 and "8 fused-int8" in html and "1 not-found" in html


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.titles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("path", "rect", "line", "circle"):  # self-closed in the SVG
            self.stack.append(tag)
        self.titles += tag == "title"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if tag in ("path", "rect", "line", "circle"):
            return
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_has_one_block_figure_per_residual_add_and_is_deterministic(demo, tmp_path):
    for policy, (int8, plan) in demo.items():
        folder = tmp_path / policy
        folder.mkdir()
        onnx.save(int8, str(folder / "model.int8.onnx"))
        (folder / "qdq_plan.json").write_text(json.dumps(plan))
        pic = read_block_picture(folder)
        assert isinstance(pic, BlockPicture)
        html = blocks_section(pic)
        assert [int(i) for i in BLOCK_SVG.findall(html)] == list(range(len(plan["residual_adds"])))
        page = _Page()
        page.feed(html)
        assert page.errors == [] and page.stack == []
        assert "<script" not in html and "http://www.w3.org/2000/svg" in html and "href" not in html
        qdq = sum(len(b.marks()) for b in pic.blocks)
        assert html.count('<g class="qdq">') <= qdq  # a pair both branches read is drawn once, at the fork
        for code in {c for b in pic.blocks for _, m in b.marks() for c in m.codes}:
            assert f"<code>{code}</code>" in html  # every cited rule is in the legend table with its meaning
        # validate writes its report elsewhere: the build folder the report names is read
        other = tmp_path / f"{policy}-validate"
        other.mkdir()
        again = read_block_picture(other, recorded=folder)
        assert again is not None and blocks_section(again) == html  # byte-identical for the same build
        assert read_block_picture(other) is None
    assert "No block picture" in blocks_section(None)


@pytest.fixture(scope="module")
def bottleneck_fp32() -> onnx.ModelProto:
    """torchvision's ResNet with Bottleneck blocks, layers [2, 1, 1, 1] (resnet50's block kinds), exported and simplified."""
    return zoo.export_simplified(next(e for e in zoo.SMALL if e.name == "resnet_bottleneck"), 32)


@pytest.mark.parametrize("policy", ["tensorrt", "onnxruntime"])
def test_torchvision_bottleneck_blocks_with_downsample_shortcuts(policy, bottleneck_fp32):
    int8, plan = _quantize(bottleneck_fp32, policy)
    pic = describe_blocks(int8, plan)
    assert len(pic.blocks) == len(plan["residual_adds"]) == 5
    assert [b.label for b in pic.blocks] == ["layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0"]
    for b in pic.blocks:
        assert [o.op for o in b.main] == ["Conv", "Relu", "Conv", "Relu", "Conv"]
        assert [o.detail for o in b.main if o.op == "Conv"][0] == "1x1"
    down = [b for b in pic.blocks if b.shortcut_kind == "projection"]
    assert [b.label for b in down] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert all([o.op for o in b.shortcut] == ["Conv"] and b.shortcut[0].precision == "int8" for b in down)
    assert [b.shortcut[0].detail for b in down] == ["1x1", "1x1/2", "1x1/2", "1x1/2"]
    rule = "R5" if policy == "tensorrt" else "O4"
    assert all(b.shortcut_into_add is not None and rule in b.shortcut_into_add.codes for b in pic.blocks)
    assert len(BLOCK_SVG.findall(blocks_section(pic))) == 5


def _cifar_resnet_graph(per_stage: int) -> onnx.ModelProto:
    """A CIFAR ResNet (6n+2 layers: three stages of ``per_stage`` BasicBlocks, 16/32/64 channels, a 1x1 stride-2
    projection where a stage starts) written as ONNX directly, as export + BatchNorm folding leave it.

    resnet110 is ``per_stage=18``; exporting the PyTorch model takes ~20 s, this graph milliseconds.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str) -> str:
        w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.1).astype(np.float32), f"{name}.w")
        b = numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")
        inits.extend([w, b])
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w.name, b.name],
                [f"{name}_out"],
                name=f"{name}/Conv",
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        return f"{name}_out"

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{name}_out"], name=f"{name}/Relu"))
        return f"{name}_out"

    x = relu(conv("input", 3, 16, 3, 1, "/conv1"), "/relu")
    cin = 16
    for stage, cout in enumerate((16, 32, 64), 1):
        for i in range(per_stage):
            blk, stride = f"/layer{stage}/layer{stage}.{i}", 2 if (i == 0 and stage > 1) else 1
            h = conv(relu(conv(x, cin, cout, 3, stride, f"{blk}/conv1"), f"{blk}/relu"), cout, cout, 3, 1, f"{blk}/conv2")
            short = conv(x, cin, cout, 1, stride, f"{blk}/shortcut") if stride > 1 else x
            nodes.append(helper.make_node("Add", [h, short], [f"{blk}/Add_out"], name=f"{blk}/Add"))
            x, cin = relu(f"{blk}/Add_out", f"{blk}/relu_1"), cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="/pool/GlobalAveragePool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="/Flatten"))
    inits.append(numpy_helper.from_array((rng.standard_normal((10, 64)) * 0.1).astype(np.float32), "fc.w"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], name="/fc/Gemm", transB=1))
    graph = helper.make_graph(
        nodes,
        "cifar",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_resnet110_every_block_drawn_in_one_aligned_column():
    int8, plan = _quantize(_cifar_resnet_graph(18), "tensorrt")
    pic = describe_blocks(int8, plan)
    assert len(pic.blocks) == len(plan["residual_adds"]) == 54
    html = blocks_section(pic)
    assert [int(i) for i in BLOCK_SVG.findall(html)] == list(range(54))  # identical blocks are all still shown
    widths = set(re.findall(r'<svg class="block" id="block-\d+" xmlns="[^"]+" width="(\d+)"', html))
    assert len(widths) == 1 and int(widths.pop()) < 940  # one row per block, Adds in one column, no side scrolling
    assert '<div class="blocks">' in html and "54 residual Adds (52 identity, 2 projection)" in html
    assert [b.label for b in pic.blocks][17:20] == ["layer1.17", "layer2.0", "layer2.1"]


def test_block_label():
    assert block_label("/layers/layers.0/Add") == "layers.0"
    assert block_label("/layer1/layer1.0/Add_1") == "layer1.0"
    assert block_label("Add_42") == "Add_42"
    assert block_label("resnet50/quant_conv2_block1_add/add") == "quant_conv2_block1_add"


def test_damaged_side_file_leaves_the_report_without_a_picture(demo, tmp_path: Path):
    int8, plan = demo["tensorrt"]
    onnx.save(int8, str(tmp_path / "model.int8.onnx"))
    (tmp_path / "qdq_plan.json").write_text("{not json")
    assert read_block_picture(tmp_path) is None


def test_kept_reasons_come_from_the_build_config_and_the_fallback_steps(demo_fp32, tmp_path: Path):
    """What write_reports passes (the pipeline's config) or finds (a build's manifest.json, for validate)."""
    kept = ("/layers/layers.2/conv1/Conv", "/layers/layers.6/conv2/Conv")
    int8, plan = _quantize(demo_fp32, "onnxruntime", keep_fp=kept)
    onnx.save(int8, str(tmp_path / "model.int8.onnx"))
    (tmp_path / "qdq_plan.json").write_text(json.dumps(plan))
    fallback = [kept[1]]  # write_reports passes fallback_layers(report): the nodes of the accepted auto-fallback steps
    passed = read_block_picture(tmp_path, fallback=fallback, config={"keep_fp": ["/layers/layers.2/*/Conv"], "keep_first_last": False})
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"keep_fp": ["/layers/layers.2/*/Conv"]}}))
    for pic in (passed, read_block_picture(tmp_path, fallback=fallback)):
        assert pic is not None
        ops = {o.node: o for b in pic.blocks for o in b.main}
        assert ops[kept[0]].kept == "keep-fp" and ops[kept[1]].kept == "auto-fallback"
        assert ops[kept[0]].precision == ops[kept[1]].precision == "fp"
        assert {o.precision for n, o in ops.items() if n not in kept and o.op == "Conv"} == {"int8"}


def test_node_names_are_escaped(demo):
    int8, plan = demo["tensorrt"]
    first = find_residual_blocks(int8)[0]
    int8, plan = _renamed(int8, plan, {first.add: "/x/<script>alert(1)</script>/Add", first.main_producer: 'c"><b>'})
    html = blocks_section(describe_blocks(int8, plan))
    assert "<script>" not in html and "&lt;script&gt;" in html and '"><b>' not in html
    page = _Page()
    page.feed(html)
    assert page.errors == [] and page.stack == []


def test_layers_changed_by_equalize_and_bias_correction_carry_their_marks(demo):
    from rescompile.report.blocks import stage_changes

    int8, plan = demo["tensorrt"]
    convs = [n.name for n in int8.graph.node if n.op_type == "Conv"]
    report = {"stages": {"equalize": {"convs": convs[1:3]}, "bias_correction": {"convs": convs[1:]}}}
    changed = stage_changes(report)
    assert changed[convs[1]] == ("EQ", "BC") and changed[convs[3]] == ("BC",) and convs[0] not in changed
    pic = describe_blocks(int8, plan, changed=changed)
    ops = {o.node: o for b in pic.blocks for o in b.main}
    assert ops[convs[1]].changes == ("EQ", "BC") and ops[convs[3]].changes == ("BC",)
    html = blocks_section(pic)
    assert html.count('class="changed"') == sum(1 for b in pic.blocks for o in (*b.main, *b.shortcut) if o.changes)
    assert ">EQ BC</text>" in html and "changed by --equalize (EQ)" in html
    plain = blocks_section(describe_blocks(int8, plan, changed=stage_changes({"stages": {}})))
    assert 'class="changed"' not in plain and "changed by --equalize" not in plain  # a plain build's picture is unchanged
