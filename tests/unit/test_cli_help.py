"""`--help` of every command at 80 columns: grouped in panels, no line wider than 80, nothing cut, no option lost."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from rescompile.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
BUILD_PANELS = [
    "Model",
    "Data",
    "Preprocessing",
    "Calibration",
    "Quantization",
    "Validation and gates",
    "TensorRT",
    "Output",
    "Scale-out (Ray)",
]
VALIDATE_PANELS = ["Model", "Data", "Preprocessing", "Validation and gates", "TensorRT", "Output", "Scale-out (Ray)", "Build folder checks"]


def help_text(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": ""})
    assert result.exit_code == 0, result.output
    return result.output


def panels(text: str) -> list[str]:
    return re.findall(r"^╭─ (.+?) ─", text, flags=re.M)


def test_every_command_is_listed():
    assert {"build", "calibrate", "validate", "engine", "deploy", "bundle", "export", "quantize", "version"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_and_keeps_every_option(command: str):
    text = help_text(command)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" not in text  # nothing truncated with an ellipsis
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    flat = " ".join(line.strip("│ ") for line in lines)
    for param in params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flat), f"{command}: {name} missing from --help"
        if param.help:  # the whole help text is there, wrapped but not cut
            assert _words_in_order(param.help, flat), f"{command}: help cut: {param.help}"


def _words_in_order(help_text: str, flat: str) -> bool:
    """Every word of ``help_text`` appears in ``flat`` in order (the help is wrapped across table rows)."""
    pos = 0
    for word in help_text.split():
        pos = flat.find(word, pos)
        if pos < 0:
            return False
        pos += len(word)
    return True


def test_build_help_is_grouped_in_panels():
    text = help_text("build")
    found = panels(text)
    assert found[0] == "Arguments" and found[1:-1] == BUILD_PANELS and found[-1] == "Options"
    assert "(extra [ray])" in text  # help is plain text, not markup: brackets are kept
    assert "Examples:" in text and "rescompile build torchvision:resnet50" in text


def test_validate_help_is_grouped_in_panels():
    text = help_text("validate")
    found = panels(text)
    assert found == ["Arguments", *VALIDATE_PANELS, "Options"]
    assert [p for p in BUILD_PANELS if p in found] == VALIDATE_PANELS[:-1]  # the panels build shows, in build's order
    model = text.split("╭─ Model ─", 1)[1].split("╭─ Data ─", 1)[0]
    assert "--reference" in model and "--weights" in model  # the reference and how it is loaded, together
    gates = text.split("╭─ Validation and gates ─", 1)[1].split("╭─ TensorRT ─", 1)[0]
    for flag in ("--max-top1-drop", "--min-agreement", "--gates", "--gate-batch", "--latency-batch", "--layerwise"):
        assert flag in gates, flag
    assert "rescompile validate model.plan --reference ref.npz" in text


def test_options_shared_by_commands_read_the_same():
    """Options defined once in rescompile.commands.options show the same help wherever they appear."""
    for option, commands in (
        ("--mean", ("build", "calibrate")),
        ("--ray-address", ("build", "calibrate", "validate")),
        ("--keep-first-last", ("build", "quantize")),
        ("--no-verify-hashes", ("engine", "validate")),
        ("--max-top1-drop", ("build", "validate")),
        ("--gates", ("build", "validate")),
        ("--weights", ("build", "validate")),
        ("--latency-budget", ("build", "validate")),
        ("--layout", ("build", "calibrate", "validate")),
        ("--save-reference", ("build", "validate")),
    ):
        helps = {
            next(p.help for p in typer.main.get_command(app).commands[c].params if option in p.opts)  # type: ignore[attr-defined]
            for c in commands
        }
        assert len(helps) == 1, (option, helps)
