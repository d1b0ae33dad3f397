"""One layout check: --layout of every command, a recipe's layout and open_source say the same thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.data.layout import check_layout, data_layout
from rescompile.data.preprocess import load_recipe
from rescompile.data.sources import open_source
from rescompile.errors import UsageError


@pytest.mark.parametrize("value", ["nchw", "nhwc"])
def test_a_layout_passes(value: str) -> None:
    assert check_layout(value) == value


@pytest.mark.parametrize(("value", "said"), [("NCHW", "'NCHW'"), ("chw", "'chw'"), (None, "None"), (3, "3")])
def test_anything_else_is_named_in_one_line(value: object, said: str) -> None:
    with pytest.raises(UsageError) as exc:
        check_layout(value, "--layout")
    assert str(exc.value.message) == f"--layout must be nchw or nhwc, not {said}"


@pytest.mark.parametrize(
    "command",
    [
        ["build", "--layout", "hwc"],
        ["calibrate", "m.onnx", "--calib", "c.npy", "--layout", "hwc"],
        ["validate", "m.onnx", "--layout", "hwc"],
        ["bundle", "b", "-o", "b.rcb", "--layout", "hwc"],
    ],
)
def test_every_command_refuses_a_bad_layout_alike(command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "--layout must be nchw or nhwc, not 'hwc'" in " ".join(result.output.split())


def test_a_recipe_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("layout: hwc\n")
    with pytest.raises(UsageError) as exc:
        load_recipe(path)
    assert exc.value.message == f"{path}: layout must be nchw or nhwc, not 'hwc'"
    path.write_text("layout: nhwc\n")
    assert load_recipe(path)["layout"] == "nhwc"


def test_open_source_checks_the_layout_of_arrays(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(UsageError) as exc:
        open_source(path, layout="hwc")
    assert exc.value.message == "layout must be nchw or nhwc, not 'hwc'"
    assert open_source(path, layout="nhwc").sample_shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("flag", "recipe", "layout"),
    [
        ("nchw", {}, "nchw"),
        ("nchw", {"layout": "nhwc"}, "nhwc"),
        ("nhwc", {}, "nhwc"),
        ("nhwc", {"layout": "nchw"}, "nhwc"),
    ],
)
def test_a_changed_flag_wins_over_the_recipe(flag: str, recipe: dict[str, str], layout: str) -> None:
    assert data_layout(flag, recipe) == layout
