"""The ResNet families at full depth (CIFAR ResNet-20..110, torchvision ResNet-18..152, ResNeXt, Wide ResNet) and the
dynamo exporter: block maps and policies on exports that take seconds each (integration; the small models: unit/)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision

from rescompile.export import ExportConfig, export_onnx, run_onnx, run_torch
from rescompile.graph.topology import find_residual_blocks
from rescompile.models.resnet_cifar import DEPTHS, cifar_resnet
from rescompile.quantize import Policy
from rescompile.quantize.verify import verify_int8
from rescompile.simplify import fold_batchnorm
from tests.models import (
    BASIC,
    BOTTLENECK,
    TINY_SHAPE,
    assert_chained,
    assert_policy_places_qdq,
    ort_optimized,
    quantize,
    quick_export,
    simplified,
    torchvision_onnx,
)


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


def signature(model: onnx.ModelProto) -> list[tuple]:
    return [(b.main_ops, b.shortcut_kind, b.shortcut_ops, b.follower, b.main_producer_op) for b in find_residual_blocks(model)]


@pytest.mark.parametrize("name", ["preact", "resnet_d"])
def test_dynamo_export_gives_the_same_block_map(name):
    assert signature(simplified(name, "dynamo")) == signature(simplified(name))


def test_dynamo_export_of_torchvision_resnet18():
    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval()
    dynamo, _ = export_onnx(module, (3, 32, 32), ExportConfig(exporter="dynamo"))
    dynamo = fold_batchnorm(dynamo)[0]
    assert any(n.op_type == "ReduceMean" for n in dynamo.graph.node)  # a different graph than TorchScript's
    blocks = find_residual_blocks(dynamo)
    assert len(blocks) == 8 and all(b.main_ops == BASIC for b in blocks)
    assert signature(dynamo) == signature(torchvision_onnx("resnet18"))
    assert_chained(blocks)


@pytest.mark.parametrize("policy", [Policy.TENSORRT, Policy.ONNXRUNTIME])
def test_policies_on_a_dynamo_export_of_preactivation(policy):
    assert_policy_places_qdq(simplified("preact", "dynamo"), policy)


def test_dynamo_exporter_gives_same_numbers(tiny_module):
    model, parity = export_onnx(tiny_module, TINY_SHAPE, ExportConfig(exporter="dynamo"))
    assert parity.passed
    x = np.random.default_rng(0).standard_normal((3, *TINY_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model, x), run_torch(tiny_module, x), atol=1e-4)


@pytest.mark.parametrize("policy", [Policy.TENSORRT, Policy.ONNXRUNTIME])
def test_int8_kernels_in_onnxruntime(policy, tmp_path):
    """The onnxruntime policy makes every Conv, Add, pool and the fc INT8 kernels; tensorrt's placement does not."""
    model = torchvision_onnx("resnet18")
    plan, int8 = quantize(model, policy)
    ops = ort_optimized(int8, tmp_path)
    if policy == Policy.ONNXRUNTIME:
        assert ops["QLinearConv"] == 20 and ops["QLinearAdd"] == 8 and ops["QGemm"] == 1
        assert ops["QLinearGlobalAveragePool"] == 1 and ops["NhwcMaxPool"] == 1
        assert ops["Conv"] + ops["FusedConv"] + ops["Add"] + ops["DequantizeLinear"] == 0
        assert ops["QuantizeLinear"] == 1  # only the network input
    else:
        assert ops["QLinearConv"] == 0 and ops["QLinearAdd"] == 0  # TensorRT-style Q/DQ is not ORT's pattern
    assert verify_int8(model, int8, plan).ok
