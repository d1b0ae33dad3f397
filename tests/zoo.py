"""A zoo of residual CNN families (torchvision and hand-written blocks) with their residual-Add counts.

Each entry builds an ``nn.Module`` with random weights (fixed seed) and says how many residual
Adds its architecture has, counted by hand from the torchvision source:

- ResNet/ResNeXt/Wide-ResNet: one Add per BasicBlock/Bottleneck (resnet18 [2,2,2,2] = 8,
  resnet34/50 [3,4,6,3] = 16, resnet101 [3,4,23,3] = 33, resnet152 [3,8,36,3] = 50).
- RegNet: one Add per ResBottleneckBlock (regnet_x_400mf depth 22, regnet_y_400mf depth 16);
  regnet_y's SE gate is a Mul, not an Add.
- MobileNetV2/V3, EfficientNet: an Add where stride is 1 and input = output channels
  (mobilenet_v2 = 10, mobilenet_v3_small = 6, mobilenet_v3_large = 10, efficientnet_b0 = 9).
- DenseNet, ShuffleNetV2: Concat, no Add (0).

``SMALL`` holds reduced-depth configurations of the same block kinds (for the unit tests);
``FULL`` the torchvision models themselves (for benchmarks/zoo.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn


@dataclass(frozen=True)
class ZooModel:
    name: str
    factory: Callable[[], nn.Module]
    residual_adds: int  # expected, counted from the architecture
    family: str


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding and ranges are exercised like a trained model."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(0.4 * torch.rand(m.num_features, generator=g) - 0.2)
    return model


def build(entry: ZooModel) -> nn.Module:
    """The model of ``entry`` with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        return _randomize_bn(entry.factory()).eval()


# --- hand-written blocks ---------------------------------------------------------------------


def _cbr(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class _Net(nn.Module):
    """Stem Conv-BN-ReLU, the given blocks, global pool, linear head."""

    def __init__(self, blocks: list[nn.Module], width: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 2)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class PreActBlock(nn.Module):
    """Pre-activation (ResNet v2): BN-ReLU-Conv twice; the Add has no ReLU after it."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        short = self.proj(a) if self.proj is not None else x
        return self.conv2(torch.relu(self.bn2(self.conv1(a)))) + short


class ResNetDBlock(nn.Module):
    """ResNet-D downsampling block: the shortcut is AvgPool(2) then a 1x1 Conv-BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, cout, 2), _cbr(cout, cout, relu=False))
        self.short = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c), _cbr(c, c, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


class SEBlock(nn.Module):
    """Squeeze-and-excitation on the main branch, before the Add (SE-ResNet)."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c), _cbr(c, c, relu=False))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // r, 1), nn.ReLU(), nn.Conv2d(c // r, c, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return torch.relu(y * self.se(y) + x)


class AddChainBlock(nn.Module):
    """An Add feeding an Add: y = x + f(x) (no ReLU), z = relu(y + g(y))."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(_cbr(c, c), _cbr(c, c, relu=False))
        self.g = nn.Sequential(_cbr(c, c), _cbr(c, c, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.f(x)
        return torch.relu(y + self.g(y))


class NoReluBlock(nn.Module):
    """An Add with no ReLU after it, whose output feeds the next Conv directly."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c), _cbr(c, c, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class TwoConvBlock(nn.Module):
    """An Add of two Conv branches of one input (Inception-style merge), then ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.a = _cbr(cin, cout, relu=False)
        self.b = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) + self.b(x))


def _preact() -> nn.Module:
    return _Net([PreActBlock(16, 16), PreActBlock(16, 32, 2), PreActBlock(32, 32)], 32)


def _resnet_d() -> nn.Module:
    return _Net([ResNetDBlock(16, 32), BasicBlock(32)], 32)


def _se() -> nn.Module:
    return _Net([SEBlock(16), SEBlock(16)], 16)


def _add_chain() -> nn.Module:
    return _Net([AddChainBlock(16)], 16)


def _no_relu() -> nn.Module:
    return _Net([NoReluBlock(16), nn.Conv2d(16, 24, 3, 1, 1), nn.ReLU(), NoReluBlock(24)], 24)


def _two_conv() -> nn.Module:
    return _Net([TwoConvBlock(16, 24), BasicBlock(24)], 24)


HAND_WRITTEN = [
    ZooModel("preact", _preact, 3, "hand-written: pre-activation"),
    ZooModel("resnet_d", _resnet_d, 2, "hand-written: ResNet-D pooled projection"),
    ZooModel("se_before_add", _se, 2, "hand-written: SE before the Add"),
    ZooModel("add_chain", _add_chain, 2, "hand-written: an Add feeding an Add"),
    ZooModel("add_no_relu", _no_relu, 2, "hand-written: Add with no ReLU after it"),
    ZooModel("two_conv_add", _two_conv, 2, "hand-written: Add of two Conv branches"),
]


# --- torchvision, reduced depth (same block kinds) -------------------------------------------


def _tv_resnet(block: str, layers: list[int], **kw: int) -> nn.Module:
    from torchvision.models import resnet

    return resnet.ResNet(getattr(resnet, block), layers, num_classes=10, **kw)


def _tv_regnet(se: float | None) -> nn.Module:
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams(
        depths=[1, 2], widths=[16, 32], group_widths=[8, 8], bottleneck_multipliers=[1.0, 1.0], strides=[2, 2], se_ratio=se
    )
    return RegNet(params, num_classes=10, stem_width=16)


def _tv_mobilenet_v2() -> nn.Module:
    from torchvision.models import MobileNetV2

    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2]]  # residuals: 0 + 1 + 2
    return MobileNetV2(num_classes=10, inverted_residual_setting=setting, width_mult=0.5)


def _tv_mobilenet_v3() -> nn.Module:
    from torchvision.models.mobilenetv3 import InvertedResidualConfig as C
    from torchvision.models.mobilenetv3 import MobileNetV3

    setting = [
        C(16, 3, 16, 16, True, "RE", 2, 1, 1.0),  # SE (hardsigmoid), stride 2: no Add
        C(16, 3, 72, 24, False, "RE", 2, 1, 1.0),
        C(24, 3, 88, 24, False, "RE", 1, 1, 1.0),  # Add
        C(24, 5, 96, 40, True, "HS", 2, 1, 1.0),  # hardswish + SE
        C(40, 5, 240, 40, True, "HS", 1, 1, 1.0),  # Add
    ]
    return MobileNetV3(setting, last_channel=64, num_classes=10)


def _tv_efficientnet() -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    setting = [MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(6, 3, 2, 16, 24, 2), MBConvConfig(6, 5, 1, 24, 24, 1)]
    return EfficientNet(setting, dropout=0.2, num_classes=10, last_channel=64)  # Adds: 1 + 1 + 1


def _tv_densenet() -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10)


def _tv_shufflenet() -> nn.Module:
    from torchvision.models import ShuffleNetV2

    return ShuffleNetV2([1, 2, 1], [16, 24, 48, 96, 128], num_classes=10)


SMALL = [
    ZooModel("resnet_basic", partial(_tv_resnet, "BasicBlock", [2, 1, 1, 1]), 5, "resnet18-34"),
    ZooModel("resnet_bottleneck", partial(_tv_resnet, "Bottleneck", [2, 1, 1, 1], width_per_group=16), 5, "resnet50-152"),
    ZooModel("resnext", partial(_tv_resnet, "Bottleneck", [1, 1, 1, 1], groups=8, width_per_group=4), 4, "resnext"),
    ZooModel("wide_resnet", partial(_tv_resnet, "Bottleneck", [1, 1, 1, 1], width_per_group=32), 4, "wide_resnet"),
    ZooModel("regnet_x", partial(_tv_regnet, None), 3, "regnet_x"),
    ZooModel("regnet_y", partial(_tv_regnet, 0.25), 3, "regnet_y (SE)"),
    ZooModel("mobilenet_v2", _tv_mobilenet_v2, 3, "mobilenet_v2"),
    ZooModel("mobilenet_v3", _tv_mobilenet_v3, 2, "mobilenet_v3 (hardswish, SE hardsigmoid)"),
    ZooModel("efficientnet", _tv_efficientnet, 3, "efficientnet (SiLU, SE)"),
    ZooModel("densenet", _tv_densenet, 0, "densenet (Concat)"),
    ZooModel("shufflenet_v2", _tv_shufflenet, 0, "shufflenet_v2 (split, shuffle, Concat)"),
    *HAND_WRITTEN,
]


def _tv(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=10)

    return make


FULL = [
    ZooModel("resnet18", _tv("resnet18"), 8, "resnet"),
    ZooModel("resnet34", _tv("resnet34"), 16, "resnet"),
    ZooModel("resnet50", _tv("resnet50"), 16, "resnet"),
    ZooModel("resnet101", _tv("resnet101"), 33, "resnet"),
    ZooModel("resnet152", _tv("resnet152"), 50, "resnet"),
    ZooModel("resnext50_32x4d", _tv("resnext50_32x4d"), 16, "resnext"),
    ZooModel("wide_resnet50_2", _tv("wide_resnet50_2"), 16, "wide_resnet"),
    ZooModel("regnet_x_400mf", _tv("regnet_x_400mf"), 22, "regnet_x"),
    ZooModel("regnet_y_400mf", _tv("regnet_y_400mf"), 16, "regnet_y (SE)"),
    ZooModel("mobilenet_v2", _tv("mobilenet_v2"), 10, "mobilenet_v2"),
    ZooModel("mobilenet_v3_small", _tv("mobilenet_v3_small"), 6, "mobilenet_v3"),
    ZooModel("mobilenet_v3_large", _tv("mobilenet_v3_large"), 10, "mobilenet_v3"),
    ZooModel("efficientnet_b0", _tv("efficientnet_b0"), 9, "efficientnet (SiLU, SE)"),
    ZooModel("densenet121", _tv("densenet121"), 0, "densenet (Concat)"),
    ZooModel("shufflenet_v2_x1_0", _tv("shufflenet_v2_x1_0"), 0, "shufflenet_v2"),
    *HAND_WRITTEN,
]


# --- the pipeline over one zoo model (used by tests/integration/test_zoo.py and benchmarks/zoo.py) -----


@dataclass
class ZooResult:
    """One zoo model quantized under one policy, checked and compared with FP32 on ONNX Runtime."""

    plan: object  # QuantPlan
    int8: object  # onnx.ModelProto
    report: object  # VerifyReport
    cosine: float  # mean per-sample cosine of INT8 vs FP32 logits
    agreement: float  # top-1 agreement with FP32, percent


def export_simplified(entry: ZooModel, size: int):  # type: ignore[no-untyped-def]
    """The FP32 ONNX of ``entry`` at 3 x size x size, exported, parity-checked, simplified, BN folded."""
    from rescompile.export import ExportConfig, export_onnx
    from rescompile.simplify import simplify

    model, _ = export_onnx(build(entry), (3, size, size), ExportConfig())
    return simplify(model, (3, size, size)).model


def zoo_inputs(size: int, n: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    """Seeded standard-normal inputs (what a normalized image looks like to the first Conv)."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def quantize_and_compare(fp32, policy: str, calib, val) -> ZooResult:  # type: ignore[no-untyped-def]
    """Plan, calibrate (max) on ``calib``, insert, prove, and compare INT8 with FP32 logits on ``val``."""
    import numpy as np

    from rescompile.calibrate import collect_stats, compute_ranges
    from rescompile.export import run_onnx
    from rescompile.quantize import insert_qdq, plan_qdq
    from rescompile.quantize.verify import verify_int8

    plan = plan_qdq(fp32, policy)
    ranges = compute_ranges(collect_stats(fp32, plan.calibrated_tensors, [calib]), "max")
    int8 = insert_qdq(fp32, plan, ranges)
    report = verify_int8(fp32, int8, plan)
    a, b = run_onnx(fp32, val).astype(np.float64), run_onnx(int8, val).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    agree = float((a.argmax(1) == b.argmax(1)).mean() * 100)
    return ZooResult(plan, int8, report, float(cos.mean()), agree)
