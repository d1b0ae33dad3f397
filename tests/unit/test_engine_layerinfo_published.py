"""The layer-information parser on engine-inspector JSON published by NVIDIA, and on variants of it.

Fixtures and the derivations: tests/layerinfo_fixtures.py (each fixture names its repo, path and
commit). No published TensorRT 11.x dump exists that we could find; the 11.x tests run the real
8.x dumps rewritten into the documented 11.x schema.
"""

from __future__ import annotations

import pytest

from rescompile.engine.layerinfo import _find, check_residual_fusion, parse_layers, precision, tensor_format
from rescompile.graph.topology import ResidualBlock
from tests.layerinfo_fixtures import (
    PUBLISHED,
    as_trt11_schema,
    blocks,
    load,
    with_reformats,
    without_formats,
)


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_residual_add_of_a_published_qat_engine_reads_fused_int8(name: str) -> None:
    doc = load(name)
    report = check_residual_fusion(doc, blocks(doc))
    assert report.detailed and len(report.adds) == len(doc["_residual_adds"]) >= 3
    assert [a.status for a in report.adds] == ["fused-int8"] * len(report.adds), report.to_dict()
    for a in report.adds:  # the layer found is the Conv+Add(+Relu) layer with two INT8 inputs
        assert a.add in a.layer.split(" + ") and a.main_conv in a.layer.split(" + ") and len(a.input_formats) == 2


@pytest.mark.parametrize("name", PUBLISHED)
def test_trt11_split_format_fields_are_read(name: str) -> None:
    doc = as_trt11_schema(load(name))
    assert "Format/Datatype" not in str(doc["Layers"]) and "Bindings" not in doc
    report = check_residual_fusion(doc, blocks(doc))
    assert {a.status for a in report.adds} == {"fused-int8"}
    assert all("Int8" in f for a in report.adds for f in a.input_formats)


@pytest.mark.parametrize("value", [None, "N/A due to dynamic shapes", "Unknown format", ""])
def test_no_readable_format_is_unknown_never_float(value: str | None) -> None:
    doc = without_formats(load(PUBLISHED[0]), value)
    report = check_residual_fusion(doc, blocks(doc))
    assert {a.status for a in report.adds} == {"unknown"} and not report.ok
    assert all("execution context" in a.note for a in report.adds)


def test_a_float_shortcut_still_reads_fused_float() -> None:
    doc = load(PUBLISHED[0])
    doc["Layers"][3]["Inputs"][1]["Format/Datatype"] = "Row major linear FP32"  # layer1.0's residual input
    statuses = [a.status for a in check_residual_fusion(doc, blocks(doc)).adds]
    assert statuses[0] == "fused-float" and statuses[1:] == ["fused-int8"] * 7


@pytest.mark.parametrize("name", PUBLISHED)
def test_reformat_layers_naming_the_fused_layer_are_skipped(name: str) -> None:
    doc = with_reformats(load(name))
    layers, _ = parse_layers(doc)
    assert sum(la.reformat for la in layers) >= len(doc["_residual_adds"])
    report = check_residual_fusion(doc, blocks(doc))
    assert {a.status for a in report.adds} == {"fused-int8"}
    assert not any(a.layer.startswith("Reformatting") for a in report.adds)


def test_the_published_trt10_reformat_layer_is_never_a_compute_layer() -> None:
    layers, detailed = parse_layers(load("issue4020_trt10_reformat_layer.json"))
    (reformat,) = layers
    # Its name lists the consumer's parts, so a name match alone would take it for the fused Conv layer.
    assert detailed and reformat.reformat and "resnetv15_relu0_fwd" in reformat.origins
    assert _find(layers, "resnetv15_relu0_fwd") is None and _find(layers, "resnetv15_conv0_fwd") is None


@pytest.mark.parametrize(
    ("fmt", "want"),
    [
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Channel major INT8 format where channel % 16 == 0", "int8"),
        ("Int8", "int8"),
        ("Row major linear FP32", "float"),
        ("Half", "float"),
        ("Row major linear BFloat16 format", "float"),
        ("Row major linear UInt8 format", "other"),
        ("Row major linear Int32", "other"),
        ("N/A due to dynamic shapes", "unknown"),
        ("Unknown format", "unknown"),
        ("None", "unknown"),
        ("", "unknown"),
        ("Thirty-two wide channel vectorized row major Int8 format (kCHW32) / Int8", "int8"),
    ],
)
def test_precision_of_format_strings(fmt: str, want: str) -> None:
    assert precision(fmt) == want


def test_tensor_format_reads_both_schemas() -> None:
    assert tensor_format({"Format/Datatype": "Row major linear FP32"}) == "Row major linear FP32"
    assert (
        tensor_format({"Format": "Row major linear FP32 format (kLINEAR)", "DataType": "Float"})
        == "Row major linear FP32 format (kLINEAR) / Float"
    )
    assert tensor_format({"Name": "x"}) == "" and tensor_format("x") == ""


# DLA: no published DLA engine-inspector dump was found; these documents follow the
# ``{ForeignNode[first...last]}`` naming TensorRT uses for subgraph layers (seen in published
# Myelin dumps, e.g. NVIDIA/TensorRT#3768) and test only our placement logic.
I8 = "Thirty-two wide channel vectorized row major Int8 format"
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


def _foreign(first: str, last: str, fmt: str, layer_type: str = "DLA") -> dict:
    return {
        "Name": f"{{ForeignNode[{first}...{last}]}}",
        "LayerType": layer_type,
        "Inputs": [{"Name": "i", "Format/Datatype": fmt}],
        "Outputs": [{"Name": "o", "Format/Datatype": fmt}],
    }


def test_adds_inside_a_dla_subgraph_get_a_dla_status_not_not_found() -> None:
    doc = {
        "Layers": [
            _foreign("conv1", "b1/Relu", I8),
            {"Name": "gap + fc", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": I8}], "Outputs": []},
        ]
    }
    report = check_residual_fusion(doc, [_block(0), _block(1)], node_order=ORDER, dla=True)
    assert [a.status for a in report.adds] == ["dla-io-int8", "dla-io-int8"] and report.ok
    before = check_residual_fusion(doc, [_block(0), _block(1)])  # without the node order nothing places them
    assert [a.status for a in before.adds] == ["not-found", "not-found"]


def test_dla_subgraph_in_fp16_and_gpu_fallback_are_judged_on_their_own() -> None:
    doc = {
        "Layers": [
            _foreign("conv1", "b0/Relu", "Row major linear FP16 format"),
            {
                "Name": "b1/conv2 + b1/Add + b1/Relu",
                "LayerType": "CaskConvolution",
                "Inputs": [{"Format/Datatype": I8}, {"Format/Datatype": I8}],
                "Outputs": [],
            },
        ]
    }
    report = check_residual_fusion(doc, [_block(0), _block(1)], node_order=ORDER, dla=True)
    # the second Add is fused INT8, but on the GPU: a DLA build whose Add fell back (D1)
    assert [a.status for a in report.adds] == ["dla-io-float", "gpu-fallback"] and not report.ok
    assert "DLA" in report.adds[0].note and "fused-int8" in report.adds[1].note


def test_a_myelin_foreign_node_on_a_gpu_build_is_not_a_pass() -> None:
    doc = {"Layers": [_foreign("conv1", "fc", I8, layer_type="Myelin")]}
    report = check_residual_fusion(doc, [_block(0)], node_order=ORDER, dla=False)
    assert report.adds[0].status == "unfused" and not report.ok
