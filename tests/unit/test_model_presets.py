"""One preset rule: every model source asks ``default_preset`` for the preprocessing its model gets by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rescompile.data.preprocess import default_preset, resolve_preprocess
from rescompile.models import load_model
from rescompile.models.onnx_source import describe_onnx
from rescompile.models.resnet_cifar import cifar_resnet


@pytest.mark.parametrize(
    ("channels", "size", "family", "preset"),
    [
        (1, 28, "demo", "fashion-mnist"),
        (3, 32, "cifar", "cifar"),
        (3, 224, "cifar", "cifar"),
        (1, 32, "cifar", "grayscale"),
        (3, 224, "torchvision", "imagenet"),
        (3, 64, "torchvision", "imagenet"),
        (1, 224, "torchvision", "imagenet"),
        (3, 224, None, "imagenet"),
        (3, 32, None, "cifar"),
        (3, 256, None, "cifar"),
        (1, 224, None, "grayscale"),
        (1, 28, None, "grayscale"),
    ],
)
def test_the_rule(channels: int, size: int, family: str | None, preset: str) -> None:
    assert default_preset(channels, size, family=family) == preset


def _onnx_file(tmp_path: Path, channels: int, size: int) -> Path:
    """Conv -> GlobalAveragePool -> Flatten: the smallest graph describe_onnx accepts."""
    w = numpy_helper.from_array(np.ones((4, channels, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    path = tmp_path / f"m{channels}x{size}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(("channels", "size", "preset"), [(3, 224, "imagenet"), (3, 32, "cifar"), (1, 28, "grayscale")])
def test_an_onnx_file_gets_the_preset_of_its_input(tmp_path: Path, channels: int, size: int, preset: str) -> None:
    loaded = describe_onnx(_onnx_file(tmp_path, channels, size))
    assert (loaded.input_shape, loaded.preset) == ((channels, size, size), preset)


@pytest.mark.parametrize(
    ("spec", "kwargs", "preset"),
    [
        ("demo", {}, "fashion-mnist"),
        ("resnet20", {}, "cifar"),
        ("resnet20", {"in_channels": 1}, "grayscale"),
        ("resnet20", {"input_size": 224}, "cifar"),
        ("torchvision:resnet18", {}, "imagenet"),
        ("torchvision:resnet18", {"in_channels": 1, "input_size": 64}, "imagenet"),
    ],
)
def test_each_model_family_gets_its_training_preset(spec: str, kwargs: dict[str, int], preset: str) -> None:
    assert load_model(spec, **kwargs).preset == preset  # type: ignore[arg-type]


def test_a_one_channel_torchvision_model_gets_imagenet_statistics_averaged() -> None:
    loaded = load_model("torchvision:resnet18", in_channels=1, input_size=64)
    pre = resolve_preprocess(loaded.preset, loaded.input_shape)
    assert (pre.name, pre.channels, pre.size) == ("imagenet", 1, 64)
    assert pre.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),)) and pre.std == pytest.approx((np.mean([0.229, 0.224, 0.225]),))


@pytest.mark.parametrize(("channels", "size", "preset"), [(1, 16, "grayscale"), (3, 32, "cifar"), (3, 224, "imagenet")])
def test_a_torchscript_file_is_guessed_like_an_onnx_file(tmp_path: Path, channels: int, size: int, preset: str) -> None:
    path = tmp_path / "r20.ts"
    torch.jit.script(cifar_resnet("resnet20", 4, channels).eval()).save(str(path))
    loaded = load_model(str(path), in_channels=channels, input_size=size, num_classes=4)
    assert loaded.preset == preset == describe_onnx(_onnx_file(tmp_path, channels, size)).preset
