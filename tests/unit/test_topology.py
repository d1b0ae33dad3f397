"""Block map: every residual Add, its main branch, shortcut and follower, on the ResNet families we claim."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
import torchvision

from rescompile.export import ExportConfig, export_onnx
from rescompile.graph.topology import block_map, find_residual_blocks
from rescompile.models.resnet_cifar import DEPTHS, cifar_resnet
from rescompile.simplify import fold_batchnorm
from tests.models import quick_export, simplified, torchvision_onnx

BASIC = ("Conv", "Relu", "Conv")
BOTTLENECK = ("Conv", "Relu", "Conv", "Relu", "Conv")


def assert_chained(blocks) -> None:  # type: ignore[no-untyped-def]
    """Structural invariants every post-activation ResNet satisfies."""
    for b in blocks:
        assert b.main != b.shortcut and b.main_producer_op == "Conv" and b.main_conv == b.main_producer
        assert b.follower == "Relu" and b.follower_node
        if b.shortcut_kind == "identity":
            assert b.shortcut == b.block_input and b.shortcut_nodes == ()
        else:
            assert b.shortcut_kind == "projection" and b.shortcut_ops == ("Conv",)


def test_tiny_resnet_blocks_found_with_projection_and_identity(tiny_onnx):
    blocks = find_residual_blocks(tiny_onnx)
    assert [b.shortcut_kind for b in blocks] == ["projection", "identity"]
    assert_chained(blocks)
    assert [b.main_ops for b in blocks] == [BASIC, BASIC]
    # The identity block's shortcut is the first block's output (after its ReLU), which is its block input.
    relu_out = next(n.output[0] for n in tiny_onnx.graph.node if n.name == blocks[0].follower_node)
    assert blocks[1].shortcut == blocks[1].block_input == relu_out


@pytest.mark.parametrize("name", sorted(DEPTHS, key=DEPTHS.get))
def test_cifar_resnets(name):
    blocks = find_residual_blocks(quick_export(cifar_resnet(name, 10, 3), (3, 16, 16)))
    n = (DEPTHS[name] - 2) // 6
    assert len(blocks) == 3 * n
    kinds = [b.shortcut_kind for b in blocks]
    assert [i for i, k in enumerate(kinds) if k == "projection"] == [n, 2 * n]  # first block of stages 2 and 3
    assert all(b.main_ops == BASIC for b in blocks)
    assert_chained(blocks)


# (arch, residual Adds, projection shortcuts, main branch). The three largest take seconds each to
# build and export, so they are marked slow (``-m "not slow"`` leaves them out).
_BIG = ("resnet101", "resnet152", "wide_resnet50_2")
TORCHVISION = [
    pytest.param(arch, adds, proj, main, id=arch, marks=[pytest.mark.slow] if arch in _BIG else [])
    for arch, adds, proj, main in [
        ("resnet18", 8, 3, BASIC),
        ("resnet34", 16, 3, BASIC),
        ("resnet50", 16, 4, BOTTLENECK),
        ("resnext50_32x4d", 16, 4, BOTTLENECK),
        ("resnet101", 33, 4, BOTTLENECK),
        ("resnet152", 50, 4, BOTTLENECK),
        ("wide_resnet50_2", 16, 4, BOTTLENECK),
    ]
]


@pytest.mark.parametrize(("arch", "adds", "projections", "main"), TORCHVISION)
def test_torchvision_resnets(arch, adds, projections, main):
    model = torchvision_onnx(arch)
    blocks = find_residual_blocks(model)
    assert len(blocks) == adds
    assert sum(b.shortcut_kind == "projection" for b in blocks) == projections
    assert blocks[0].shortcut_kind == ("projection" if main == BOTTLENECK else "identity")
    assert all(b.main_ops == main for b in blocks)
    assert_chained(blocks)
    # Each block's input is the previous block's output (after its ReLU); the first one's is the stem's MaxPool.
    relu_output = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    assert [b.block_input for b in blocks[1:]] == [relu_output[b.follower_node] for b in blocks[:-1]]
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producer[blocks[0].block_input] == "MaxPool"


def test_preactivation_resnet_has_no_follower():
    blocks = find_residual_blocks(simplified("preact"))
    assert len(blocks) == 3
    assert [b.follower for b in blocks] == [None, None, None]
    assert [b.shortcut_kind for b in blocks] == ["identity", "projection", "identity"]
    # Identity blocks start from the raw block input (BN-ReLU belong to the main branch); the projection
    # block's branches meet after the shared BN-ReLU pre-activation.
    assert blocks[0].main_ops == ("BatchNormalization", "Relu", "Conv", "Relu", "Conv")
    assert blocks[1].main_ops == BASIC and blocks[1].shortcut_ops == ("Conv",)
    assert all(b.main_producer_op == "Conv" for b in blocks)
    assert blocks[2].block_input == blocks[1].output  # the Add output feeds the next block directly


def test_resnet_d_pooled_projection():
    (block,) = find_residual_blocks(simplified("resnet_d"))
    assert block.shortcut_kind == "pooled-projection"
    assert block.shortcut_ops == ("AveragePool", "Conv") and len(block.shortcut_nodes) == 2
    assert block.main_ops == BOTTLENECK and block.follower == "Relu"


def test_no_residual_add_is_an_empty_map():
    model = simplified("plain")
    assert any(n.op_type == "Conv" and len(n.input) == 3 for n in model.graph.node)  # biased convs, no residual
    assert find_residual_blocks(model) == []
    doc = block_map(model)
    assert doc["residual_adds"] == 0 and doc["blocks"] == []


def _signature(model: onnx.ModelProto) -> list[tuple]:
    return [(b.main_ops, b.shortcut_kind, b.shortcut_ops, b.follower, b.main_producer_op) for b in find_residual_blocks(model)]


@pytest.mark.parametrize("name", ["preact", "resnet_d"])
def test_dynamo_export_gives_the_same_block_map(name):
    assert _signature(simplified(name, "dynamo")) == _signature(simplified(name))


def test_dynamo_export_of_torchvision_resnet18():
    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval()
    dynamo, _ = export_onnx(module, (3, 32, 32), ExportConfig(exporter="dynamo"))
    dynamo = fold_batchnorm(dynamo)[0]
    assert any(n.op_type == "ReduceMean" for n in dynamo.graph.node)  # a different graph than TorchScript's
    blocks = find_residual_blocks(dynamo)
    assert len(blocks) == 8 and all(b.main_ops == BASIC for b in blocks)
    assert _signature(dynamo) == _signature(torchvision_onnx("resnet18"))
    assert_chained(blocks)


def test_block_map_json_is_plain_data(tiny_onnx):
    import json

    doc = json.loads(json.dumps(block_map(tiny_onnx)))
    assert doc["residual_adds"] == 2 and doc["shortcut_kinds"] == {"identity": 1, "projection": 1}
    assert doc["followers"] == {"Relu": 2, "none": 0}
    assert doc["blocks"][0]["main_ops"] == list(BASIC)


def test_unsimplified_graph_names_the_last_conv_behind_batchnorm():
    # An export without BatchNorm folding: the Add reads a BatchNormalization, the block's last Conv is before it.
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            cifar_resnet("resnet20", 10, 1).eval(),
            (torch.zeros(1, 1, 16, 16),),
            buf,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
        )
    blocks = find_residual_blocks(onnx.load_from_string(buf.getvalue()))
    assert len(blocks) == 9 and all(b.main_producer_op == "BatchNormalization" for b in blocks)
    assert all(b.main_conv and b.main_conv.endswith("conv2/Conv") for b in blocks)
    assert [b.shortcut_ops for b in blocks if b.shortcut_kind == "projection"] == [("Conv", "BatchNormalization")] * 2
