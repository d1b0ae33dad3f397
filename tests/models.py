"""Small models for the tests and their graphs: built on the CPU from torch.nn, exported, simplified, quantized.

Shared by the test modules (``from tests.models import ...``); fixtures over them live in tests/conftest.py.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from onnx import helper, numpy_helper
from torch import nn

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.data.preprocess import Preprocess
from rescompile.export import ExportConfig, export_onnx
from rescompile.graph.index import node_name
from rescompile.models.resnet_cifar import BasicBlock
from rescompile.quantize import QuantPlan, insert_qdq, plan_qdq
from rescompile.simplify import fold_batchnorm, simplify


class TinyResNet(nn.Module):
    """Stem conv, ``blocks`` BasicBlocks (the first optionally downsampling), pool, fc."""

    def __init__(self, blocks: int = 2, downsample: bool = True, in_channels: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        layers = []
        planes = 8
        for i in range(blocks):
            out = 16 if (downsample and i == 0) else planes
            layers.append(BasicBlock(planes, out, stride=2 if (downsample and i == 0) else 1))
            planes = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(planes, classes))
        torch.manual_seed(0)
        for m in self.modules():  # non-trivial BN statistics so folding is exercised
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def tiny_resnet(blocks: int = 2, downsample: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet(blocks, downsample).eval()


TINY_SHAPE = (1, 16, 16)


def tiny_gray() -> Preprocess:
    """The preprocessing of the ``tiny_npz`` images (uint8 1x16x16) for the tiny model."""
    return Preprocess(name="tiny", size=16, resize=16, mean=(0.5,), std=(0.25,), channels=1)


class PreActBlock(nn.Module):
    """He et al. 2016 (identity mappings): BN-ReLU-Conv-BN-ReLU-Conv + shortcut, nothing after the Add."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        shortcut = self.proj(pre) if self.proj is not None else x
        return self.conv2(torch.relu(self.bn2(self.conv1(pre)))) + shortcut


class ResNetDBlock(nn.Module):
    """Bag-of-tricks ResNet-D downsampling: the shortcut is AvgPool(2) then a 1x1 Conv + BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.main = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, 2, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.shortcut(x))


def _init_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial statistics so BatchNorm folding changes numbers
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def preact_resnet(classes: int = 4) -> nn.Module:
    """A small pre-activation ResNet: stem conv, an identity block, a projection block, final BN-ReLU."""
    torch.manual_seed(0)
    return _init_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False),
            PreActBlock(8, 8),
            PreActBlock(8, 16, 2),
            PreActBlock(16, 16),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, classes),
        )
    )


def resnet_d(classes: int = 4) -> nn.Module:
    """A stem, one ResNet-D downsampling block, pool, fc."""
    torch.manual_seed(0)
    return _init_bn(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            ResNetDBlock(16, 32),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, classes),
        )
    )


def plain_cnn() -> nn.Module:
    """No residual Add at all (a bias Add would not count either)."""
    torch.manual_seed(0)
    return _init_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
    )


SMALL_SHAPE = (3, 16, 16)


@cache
def simplified(name: str, exporter: str = "torchscript") -> onnx.ModelProto:
    """The pipeline's own export + simplify (parity-checked) of a small test model; cached per session."""
    module = {"preact": preact_resnet, "resnet_d": resnet_d, "plain": plain_cnn}[name]()
    model, _ = export_onnx(module, SMALL_SHAPE, ExportConfig(exporter=exporter))
    return simplify(model, SMALL_SHAPE).model


def quick_export(module: nn.Module, shape: tuple[int, int, int]) -> onnx.ModelProto:
    """TorchScript export + our BatchNorm folding, no parity checks: fast enough for 150-layer nets."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, *shape),),
            buf,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    # Without constant folding the exporter reads parameters through Identity nodes; point consumers
    # at the initializers themselves so BatchNorm folding sees constants.
    inits = {t.name for t in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        n.input[:] = [alias.get(i, i) for i in n.input]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return fold_batchnorm(model)[0]


@cache
def torchvision_onnx(arch: str, size: int = 32) -> onnx.ModelProto:
    """A randomly initialised torchvision model (``weights=None``), exported quickly; cached per session."""
    torch.manual_seed(0)
    return quick_export(getattr(torchvision.models, arch)(weights=None), (3, size, size))


# -- quantized with max ranges from random data ----------------------------------------------------------


def calibrate(model: onnx.ModelProto, plan: QuantPlan, seed: int = 1, n: int = 16) -> dict:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    shape[0] = n
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return compute_ranges(collect_stats(model, plan.calibrated_tensors, [x[: n // 2], x[n // 2 :]]))


def quantize(model: onnx.ModelProto, policy: str, **kw) -> tuple[QuantPlan, onnx.ModelProto]:  # type: ignore[no-untyped-def]
    plan = plan_qdq(model, policy, **kw)
    return plan, insert_qdq(model, plan, calibrate(model, plan))


# -- graph surgery -----------------------------------------------------------------------------------------


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def find_node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if node_name(n) == name)


def add_qdq(model: onnx.ModelProto, consumer: str, index: int, *, zp: int = 0, dtype=np.int8) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """A new Q/DQ pair on one input edge of ``consumer``."""
    m = copy_model(model)
    node = find_node(m, consumer)
    t = node.input[index]
    m.graph.initializer.extend(
        [numpy_helper.from_array(np.float32(0.05), "extra_scale"), numpy_helper.from_array(np.array(zp, dtype), "extra_zp")]
    )
    pos = list(m.graph.node).index(node)
    m.graph.node.insert(pos, helper.make_node("DequantizeLinear", ["extra_q", "extra_scale", "extra_zp"], ["extra_dq"], name="extra_DQ"))
    m.graph.node.insert(pos, helper.make_node("QuantizeLinear", [t, "extra_scale", "extra_zp"], ["extra_q"], name="extra_Q"))
    node.input[index] = "extra_dq"
    return m


def assert_policy_places_qdq(model: onnx.ModelProto, policy: str) -> None:
    """``policy`` on a pre-activation or ResNet-D model: the proof passes, INT8 tracks FP32, each Add quantized as the
    policy says (TensorRT: the shortcut only; ONNX Runtime: both inputs, and the Add's own output when nothing follows)."""
    from rescompile.export import run_onnx
    from rescompile.quantize.verify import verify_int8

    plan, int8 = quantize(model, policy)
    report = verify_int8(model, int8, plan)
    assert report.ok, report.violations
    x = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)
    ref, got = run_onnx(model, x), run_onnx(int8, x)
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.98
    for b in plan.residual_adds:
        if policy == "tensorrt":
            assert b.quantized == [b.shortcut]
        else:
            assert sorted(b.quantized) == sorted([b.main, b.shortcut])
            # pre-activation: nothing follows the Add, so its own output is quantized
            assert b.output_quantized is not None
            if b.follower is None:
                assert b.output_quantized == b.add_output


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


def ort_optimized(model: onnx.ModelProto, tmp_path: Path) -> Counter[str]:
    """Op counts of the graph ONNX Runtime actually runs (level ALL, CPU provider)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
