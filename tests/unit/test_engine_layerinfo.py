"""Engine layer information (residual-Add fusion), the plan sidecar, and device helpers, without a GPU.

The layer-information documents here are written by hand after the schema in
shared/notes/tensorrt.md (``Layers[i]``: Name, LayerType, Inputs/Outputs with Format/Datatype,
Metadata); they test our reading of it, not TensorRT. The real documents are read in tests/gpu.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rescompile.engine.device import parse_tegra_release
from rescompile.engine.layerinfo import check_residual_fusion, io_tensors, parse_layers
from rescompile.engine.sidecar import DeviceInfo, compatibility_problems, make_sidecar, read_sidecar, sidecar_path
from rescompile.errors import UsageError
from rescompile.graph.topology import ResidualBlock

INT8 = "Thirty-two wide channel vectorized row major Int8 format"
FP32 = "Row major linear FP32"


def _block(i: int) -> ResidualBlock:
    return ResidualBlock(
        add=f"/blocks/blocks.{i}/Add",
        output=f"/blocks/blocks.{i}/Add_output_0",
        main=f"/blocks/blocks.{i}/conv2/Conv_output_0",
        main_producer=f"/blocks/blocks.{i}/conv2/Conv",
        main_producer_op="Conv",
        main_depth=4,
        shortcut="s",
        shortcut_kind="identity",
        shortcut_nodes=(),
        block_input="b",
        follower="Relu",
        follower_node=f"/blocks/blocks.{i}/relu_1/Relu",
    )


def _layer(name: str, fmt_in: list[str], layer_type: str = "CaskConvolution", **extra: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "LayerType": layer_type,
        "Inputs": [{"Name": f"in{i}", "Format/Datatype": f} for i, f in enumerate(fmt_in)],
        "Outputs": [{"Name": "o", "Format/Datatype": fmt_in[0]}],
        **extra,
    }


def test_fused_int8_fused_float_and_unfused_are_told_apart() -> None:
    doc = {
        "Layers": [
            _layer("/blocks/blocks.0/conv2/Conv + /blocks/blocks.0/Add + /blocks/blocks.0/relu_1/Relu", [INT8, INT8]),
            _layer("/blocks/blocks.1/conv2/Conv + /blocks/blocks.1/Add", [INT8, FP32]),
            _layer("/blocks/blocks.2/conv2/Conv", [INT8]),
            _layer("/blocks/blocks.2/Add", [FP32, FP32], "ElementWise"),
        ],
        "Bindings": ["input", "output"],
    }
    report = check_residual_fusion(json.dumps(doc), [_block(0), _block(1), _block(2), _block(3)])
    assert [a.status for a in report.adds] == ["fused-int8", "fused-float", "unfused", "not-found"]
    assert not report.ok and report.detailed
    assert report.to_dict()["adds"][0]["ok"] is True
    assert report.adds[1].input_formats == (INT8, FP32)


def test_fusion_found_through_onnx_layer_metadata() -> None:
    meta = "[ONNX Layer: /blocks/blocks.0/conv2/Conv]\x1f[ONNX Layer: /blocks/blocks.0/Add]"
    doc = {"Layers": [_layer("fused_kernel_17", [INT8, INT8], Metadata=meta)]}
    report = check_residual_fusion(doc, [_block(0)])
    assert report.ok and report.adds[0].layer == "fused_kernel_17"
    # The separator may come as a raw control character, which strict JSON parsing rejects.
    raw = json.dumps(doc).replace("\\u001f", "\x1f")
    assert "\x1f" in raw and check_residual_fusion(raw, [_block(0)]).ok


def test_add_name_must_match_as_a_whole_token() -> None:
    doc = {"Layers": [_layer("/blocks/blocks.0/conv2/Conv + /blocks/blocks.0/Add_1", [INT8, INT8])]}
    assert check_residual_fusion(doc, [_block(0)]).adds[0].status == "not-found"


def test_names_only_layer_information_is_not_a_pass() -> None:
    doc = {"Layers": ["/blocks/blocks.0/conv2/Conv + /blocks/blocks.0/Add"], "Bindings": []}
    layers, detailed = parse_layers(doc)
    report = check_residual_fusion(doc, [_block(0)])
    assert not detailed and len(layers) == 1 and report.adds[0].status == "unknown" and not report.ok


def test_io_tensor_list_of_10x_and_11x() -> None:
    assert io_tensors({"Layers": [], "Bindings": ["a"]}) == ["a"]
    assert io_tensors({"Layers": [], "I/O Tensors": [{"Name": "a"}]}) == [{"Name": "a"}]


ORIN = DeviceInfo("Orin", (8, 7), "36.4.0")


def _sidecar(version: str = "10.3.0.30", device: DeviceInfo = ORIN, **kw: Any) -> dict[str, Any]:
    return make_sidecar(
        tensorrt_version=version, device=device, settings={}, onnx_sha256="a", plan_sha256="b", timing_cache=None, fusion=None, **kw
    )


def test_plan_compatibility_requires_same_tensorrt_and_gpu() -> None:
    assert compatibility_problems(_sidecar(), "10.3.0.30", ORIN) == []
    (p,) = compatibility_problems(_sidecar(), "10.3.0.26", ORIN)
    assert "10.3.0.30" in p and "10.3.0.26" in p
    problems = compatibility_problems(_sidecar(), "10.3.0.30", DeviceInfo("NVIDIA GeForce RTX 4090", (8, 9)))
    assert len(problems) == 2 and any("8.7" in p and "8.9" in p for p in problems)
    vc = _sidecar("10.16.1.11", version_compatible=True)
    assert compatibility_problems(vc, "11.4.0.106", ORIN) == []
    assert compatibility_problems(_sidecar("11.4.0.106", version_compatible=True), "10.16.1.11", ORIN)


def test_sidecar_read_errors(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"x")
    with pytest.raises(UsageError, match="no sidecar"):
        read_sidecar(plan)
    sidecar_path(plan).write_text("{}")
    with pytest.raises(UsageError, match="not a rescompile plan sidecar"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps(_sidecar()))
    assert read_sidecar(plan)["gpu"] == {"name": "Orin", "compute_capability": [8, 7], "l4t": "36.4.0", "sm_count": None, "module": None}


def test_tegra_release_parsing() -> None:
    line = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024"
    assert parse_tegra_release(line) == "36.4.0"
    assert parse_tegra_release("Ubuntu 24.04") is None
