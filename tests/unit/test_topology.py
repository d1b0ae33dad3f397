"""Block map: every residual Add, its main branch, shortcut and follower, on small models of the ResNet kinds we claim
(the families at full depth, and the dynamo exporter: tests/integration/test_model_families.py)."""

from __future__ import annotations

import io
import warnings

import onnx
import torch

from rescompile.graph.topology import block_map, find_residual_blocks
from rescompile.models.resnet_cifar import cifar_resnet
from tests.models import BASIC, BOTTLENECK, assert_chained, simplified


def test_tiny_resnet_blocks_found_with_projection_and_identity(tiny_onnx):
    blocks = find_residual_blocks(tiny_onnx)
    assert [b.shortcut_kind for b in blocks] == ["projection", "identity"]
    assert_chained(blocks)
    assert [b.main_ops for b in blocks] == [BASIC, BASIC]
    # The identity block's shortcut is the first block's output (after its ReLU), which is its block input.
    relu_out = next(n.output[0] for n in tiny_onnx.graph.node if n.name == blocks[0].follower_node)
    assert blocks[1].shortcut == blocks[1].block_input == relu_out


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


def test_blocks_follow_the_graph_as_it_is_now(tiny_onnx):
    """Blocks are found once per graph structure: an edited graph (a renamed node, an output, an initializer, a node
    removed) gets its own, and a caller changing the returned list changes nothing for the next."""
    model = onnx.ModelProto.FromString(tiny_onnx.SerializeToString())
    first = find_residual_blocks(model)
    first.clear()
    assert find_residual_blocks(model) == find_residual_blocks(tiny_onnx) != []
    add = next(n for n in model.graph.node if n.name == find_residual_blocks(model)[0].add)
    add.name = "renamed_add"
    assert find_residual_blocks(model)[0].add == "renamed_add"
    assert find_residual_blocks(model)[0].follower == "Relu"
    model.graph.output.append(onnx.helper.make_tensor_value_info(add.output[0], onnx.TensorProto.FLOAT, None))
    assert find_residual_blocks(model)[0].follower is None  # an Add that is a graph output has no follower
    del model.graph.output[-1]
    relu = next(n for n in model.graph.node if n.input and n.input[0] == add.output[0])
    for n in model.graph.node:
        n.input[:] = [add.output[0] if i == relu.output[0] else i for i in n.input]
    model.graph.node.remove(relu)
    blocks = find_residual_blocks(model)
    assert blocks[0].follower is None and blocks[1].block_input == add.output[0]
    model.graph.initializer.append(onnx.helper.make_tensor(blocks[1].shortcut, onnx.TensorProto.FLOAT, [1], [0.0]))
    assert [b.add for b in find_residual_blocks(model)] == ["renamed_add"]  # the other Add now reads a constant
