"""The recipes in calibration/recipes: each loads, gives its preset's values, and works with --recipe."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from rescompile.calibrate.ranges import CalibrationResult
from rescompile.cli import app
from rescompile.data.preprocess import PRESETS, load_recipe, resolve_preprocess

RECIPES = Path(__file__).parents[2] / "calibration" / "recipes"
SHAPES = {
    "imagenet": (3, 224, 224),
    "imagenet-bgr": (3, 224, 224),
    "cifar": (3, 32, 32),
    "fashion-mnist": (1, 28, 28),
    "grayscale": (1, 28, 28),
}


def test_every_recipe_file_is_tested() -> None:
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_recipe_loads_and_matches_its_preset(name: str) -> None:
    doc = load_recipe(RECIPES / f"{name}.yaml")
    pre = resolve_preprocess("imagenet", SHAPES[name], recipe=doc)
    preset = PRESETS[doc["preset"]]
    assert pre.size == preset.size and pre.resize == preset.resize and pre.channels == preset.channels
    if name == "imagenet-bgr":  # the same statistics, listed in B, G, R order
        assert pre.channel_order == "bgr" and pre.mean == preset.mean[::-1] and pre.std == preset.std[::-1]
    else:
        assert pre.mean == pytest.approx(preset.mean) and pre.std == pytest.approx(preset.std)
        assert pre.channel_order == "rgb"


def test_recipe_file_drives_calibrate_like_the_preset(tmp_path: Path, tiny_onnx: onnx.ModelProto, tiny_npz: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, model)
    runner = CliRunner()
    outs = {}
    for how, args in (("recipe", ["--recipe", str(RECIPES / "grayscale.yaml")]), ("preset", ["--preset", "grayscale"])):
        out = tmp_path / f"{how}.json"
        result = runner.invoke(app, ["calibrate", str(model), "--calib", str(tiny_npz), "--size", "16", *args, "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        outs[how] = CalibrationResult.from_json(out.read_text())
    assert outs["recipe"].preprocess["mean"] == [0.5] and outs["recipe"].preprocess["size"] == 16
    assert {k: r.amax for k, r in outs["recipe"].ranges.items()} == {k: r.amax for k, r in outs["preset"].ranges.items()}
