"""The hard models of ``benchmarks/accuracy_hard.py``: definitions, seeded training on Fashion-MNIST, and ONNX export.

Three families on which plain INT8 (``max`` calibration, ``tensorrt`` policy) costs accuracy:

* ``mbv2``: a MobileNetV2-like network (inverted residuals, depthwise 3x3, linear bottlenecks).
* ``resnet_outlier``: a CIFAR-style ResNet trained normally, then made hard by an exactly
  function-preserving transform: inside each residual block the output channels of the first
  convolution (its folded BatchNorm) are scaled by factors spread log-uniformly over
  ``10^-2..10^2`` and the second convolution's matching input weights are divided by the same
  factors. ReLU is positively homogeneous (``relu(s*x) = s*relu(x)`` for ``s > 0``), so FP32
  outputs are unchanged while the per-tensor range of the tensor between the two convolutions is
  set by its largest channel (the situation cross-layer equalization exists for).
* ``bitv2``: a BiT-like pre-activation ResNet-v2 with GroupNorm and weight-standardized
  convolutions (the standardization is baked into the exported weights).

Every model reads Fashion-MNIST preprocessed like the demo (``--preset fashion-mnist``: pixel/255,
mean 0.2860, std 0.3530), 1x28x28, and is trained on the training images minus a seeded held-out
split (the validation set the tools may use); the 10,000 test images are for measuring only.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.2860, 0.3530  # the demo's (and rescompile's fashion-mnist preset's) normalization


# ---------------------------------------------------------------------------------------------- mbv2
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + act, 3x3 depthwise + act, 1x1 linear projection; Add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) cut down for 28x28 inputs: (t, c, n, s) rows below, 1x1 head to 256, GAP, FC."""

    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 1), (4, 64, 2, 2))

    def __init__(self, num_classes: int = 10, in_channels: int = 1, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), act()]
        cin = 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t, act))
                cin = c
        layers += [nn.Conv2d(cin, 256, 1, bias=False), nn.BatchNorm2d(256), act()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# ------------------------------------------------------------------------------------- resnet (v1)
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, residual Add, ReLU (He et al. 2016); 1x1 conv-BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet, stages of ``widths`` with ``blocks`` BasicBlocks each."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 2, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, w in enumerate(widths):
            for i in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if stage > 0 and i == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def spread_channel_ranges(model: onnx.ModelProto, decades: float, seed: int) -> tuple[onnx.ModelProto, dict[str, list[float]]]:
    """A function-preserving transform that spreads per-channel activation ranges over ``2 * decades`` orders of magnitude.

    For every ``P -> Relu -> consumers`` in graph order where ``P`` is a per-channel affine map read only by the
    Relu (a Conv, its BatchNorm folded, or GroupNorm's ``Mul(gamma) -> Add(beta)``) and every consumer is a Conv
    (dense, or depthwise), output channel ``c`` of ``P`` is multiplied by ``s_c = 10^u_c``, ``u_c`` uniform in
    ``[-decades, decades]`` (seeded), and each consumer's weights for input channel ``c`` are divided by ``s_c``
    (``W[:, c]`` dense, ``W[c]`` depthwise). ReLU is positively homogeneous (``relu(s x) = s relu(x)``, ``s > 0``)
    and a convolution is linear in each input channel, so the function is unchanged up to float rounding, while
    the Relu output, the tensor INT8 quantizes per tensor, now has channels whose ranges differ by up to
    ``10^(2 * decades)`` (the situation cross-layer equalization undoes, Nagel et al. 2019).

    Returns the new model and the factors per Relu node.
    """
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    arr = {name: numpy_helper.to_array(t).copy() for name, t in inits.items()}

    def group(n: onnx.NodeProto) -> int:
        return next((a.i for a in n.attribute if a.name == "group"), 1)

    def affine(n: onnx.NodeProto | None) -> list[tuple[str, str]] | None:
        """(initializer, how) to scale per output channel, or None if ``n`` is no per-channel affine map."""
        if n is None or len(consumers.get(n.output[0], [])) != 1:
            return None
        if n.op_type == "Conv" and n.input[1] in arr and group(n) == 1:
            return [(n.input[1], "out")] + ([(n.input[2], "vec")] if len(n.input) > 2 and n.input[2] else [])
        if n.op_type == "Conv" and n.input[1] in arr:  # depthwise: W[c] is channel c too
            return [(n.input[1], "out")] + ([(n.input[2], "vec")] if len(n.input) > 2 and n.input[2] else [])
        if n.op_type == "Add" and n.input[1] in arr:
            mul = producer.get(n.input[0])
            if mul is not None and mul.op_type == "Mul" and mul.input[1] in arr and len(consumers[mul.output[0]]) == 1:
                return [(mul.input[1], "vec"), (n.input[1], "vec")]
        return None

    rng = np.random.default_rng(seed)
    factors: dict[str, list[float]] = {}
    for relu in list(g.node):
        if relu.op_type != "Relu":
            continue
        scaled = affine(producer.get(relu.input[0]))
        users = consumers.get(relu.output[0], [])
        if scaled is None or not users or any(u.op_type != "Conv" or u.input[0] != relu.output[0] or u.input[1] not in arr for u in users):
            continue
        c = arr[scaled[0][0]].shape[0]
        dense = [u for u in users if group(u) == 1]
        depthwise = [u for u in users if group(u) == c and arr[u.input[1]].shape[1] == 1]
        if len(dense) + len(depthwise) != len(users) or any(arr[u.input[1]].shape[1] != c for u in dense):
            continue
        s = (10.0 ** rng.uniform(-decades, decades, c)).astype(np.float32)
        for name, _ in scaled:
            arr[name] *= s.reshape((c,) + (1,) * (arr[name].ndim - 1))
        for u in dense:
            arr[u.input[1]] /= s.reshape(1, c, *([1] * (arr[u.input[1]].ndim - 2)))
        for u in depthwise:
            arr[u.input[1]] /= s.reshape((c,) + (1,) * (arr[u.input[1]].ndim - 1))
        factors[relu.name] = [float(v) for v in s]
    if not factors:
        raise ValueError("no affine -> Relu -> Conv pattern in the model")
    for name, t in inits.items():
        t.CopyFrom(numpy_helper.from_array(arr[name], name))
    return out, factors


# -------------------------------------------------------------------------------------- BiT / v2
class StdConv2d(nn.Conv2d):
    """Weight-standardized convolution (Qiao et al. 2019; BiT, Kolesnikov et al. 2020): each filter has zero mean, unit variance."""

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var + 1e-10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBlock(nn.Module):
    """ResNet-v2 block (He et al. 2016b) as in BiT: GN-ReLU-conv3x3, GN-ReLU-conv3x3, Add; projection from the pre-activation."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(groups, cin)
        self.conv1 = StdConv2d(cin, cout, 3, stride, 1, bias=False)
        self.gn2 = nn.GroupNorm(groups, cout)
        self.conv2 = StdConv2d(cout, cout, 3, 1, 1, bias=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.gn1(x))
        shortcut = self.downsample(pre) if self.downsample is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.gn2(out)))
        return out + shortcut


class BiTSmall(nn.Module):
    """BiT-like ResNet-v2: StdConv stem, PreActBlocks, final GN-ReLU, GAP, FC."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 2, groups: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = StdConv2d(1, widths[0], 3, 2, 1, bias=False)
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, w in enumerate(widths):
            for i in range(blocks):
                layers.append(PreActBlock(cin, w, 2 if stage > 0 and i == 0 else 1, groups))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(groups, cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(F.relu(self.norm(x))), 1))


@torch.no_grad()
def bake_weight_standardization(model: nn.Module) -> nn.Module:
    """Replace every StdConv2d by a plain Conv2d holding its standardized weight (the same function, a clean ONNX graph)."""
    for name, child in list(model.named_children()):
        if isinstance(child, StdConv2d):
            conv = nn.Conv2d(
                child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding, bias=child.bias is not None
            )
            conv.weight.copy_(child.standardized_weight())
            if child.bias is not None:
                conv.bias.copy_(child.bias)
            setattr(model, name, conv)
        else:
            bake_weight_standardization(child)
    return model


# ------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Recipe:
    """How one family is trained (recorded in the model card)."""

    build: Callable[[], nn.Module]
    epochs: float  # passes over the training images (a fraction trains on the first part of one seeded permutation)
    lr: float
    weight_decay: float
    batch_size: int = 128
    label_smoothing: float = 0.1


RECIPES: dict[str, Recipe] = {
    # The trained bases of the hard models (each hard model = its base + spread_channel_ranges). mbv2_plain uses
    # plain ReLU (the transform needs a positively homogeneous activation; ReLU6 is not); bitv2_plain trains
    # without weight decay at a higher rate than bitv2_wd (an attempt at harder ranges by training alone).
    "mbv2_plain": Recipe(functools.partial(MobileNetV2Small, act=nn.ReLU), epochs=0.5, lr=0.1, weight_decay=4e-5),
    "resnet_plain": Recipe(ResNetSmall, epochs=1, lr=0.1, weight_decay=5e-4),
    "bitv2_plain": Recipe(BiTSmall, epochs=1, lr=0.1, weight_decay=0.0),
    # First attempts, kept as controls (what INT8 does to the same family without the change).
    "mbv2_relu6": Recipe(MobileNetV2Small, epochs=0.5, lr=0.1, weight_decay=4e-5),
    "bitv2_wd": Recipe(BiTSmall, epochs=1, lr=0.05, weight_decay=5e-4),
}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N,28,28 pixels -> normalized float N,1,28,28 (the fashion-mnist preset)."""
    return ((torch.from_numpy(images).float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The demo's augmentation: random horizontal flip, random crop with 2-pixel padding."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2), value=float(-MEAN / STD))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + 28, dx : dx + 28]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000))
    return 100.0 * correct / len(x)


def train(family: str, images: np.ndarray, labels: np.ndarray, seed: int, log: Callable[[str], None] = print) -> tuple[nn.Module, float]:
    """Train ``family`` with its recipe (SGD, Nesterov momentum 0.9, one-cycle LR), seeded; returns (model in eval mode, seconds)."""
    recipe = RECIPES[family]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = recipe.build()
    x, y = to_tensor(images), torch.from_numpy(labels.astype(np.int64))
    per_epoch = len(x) // recipe.batch_size
    total = int(recipe.epochs * per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.15)
    start = time.time()
    for epoch in range(math.ceil(recipe.epochs)):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(min(per_epoch, total - epoch * per_epoch)):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"{family}: loss diverged at epoch {epoch + 1} step {i}")
            if (i + 1) % 100 == 0:
                log(f"{family}: epoch {epoch + 1} step {i + 1}/{per_epoch} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
        log(f"{family}: epoch {epoch + 1}/{math.ceil(recipe.epochs)} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    model.eval()
    return model, time.time() - start


def export_onnx(model: nn.Module, path: Path) -> None:
    """ONNX (opset 17, torchscript exporter) with a dynamic batch dimension, input ``input``, output ``logits``."""
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )
