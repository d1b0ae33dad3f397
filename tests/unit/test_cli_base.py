"""The CLI's base: option groups expanded for Typer, errors mapped to exit codes in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from rescompile.commands.base import App
from rescompile.commands.groups import OptionGroup, expand_groups
from rescompile.errors import GateFailed, MissingDependency, UsageError

runner = CliRunner()


@dataclass(frozen=True)
class Pair(OptionGroup):
    left: Annotated[int, typer.Option(min=0, help="Left.", rich_help_panel="Pair")] = 1
    right: Annotated[str | None, typer.Option(help="Right.", rich_help_panel="Pair")] = None


def make_app() -> tuple[App, list[object]]:
    app, seen = App(), []

    @app.command()
    def run(name: Annotated[str, typer.Argument()], *, pair: Pair, fail: Annotated[str, typer.Option()] = "") -> None:
        seen.append((name, pair))
        errors = {
            "usage": UsageError("bad value", hint="try another"),
            "gate": GateFailed("gate missed"),
            "dep": MissingDependency("no TensorRT"),
            "bug": ZeroDivisionError("x"),
            "exit": typer.Exit(7),
        }
        if fail:
            raise errors[fail]

    @app.command()
    def other() -> None:  # a second command keeps `run` a subcommand
        pass

    return app, seen


def test_a_group_parameter_becomes_its_options_and_comes_back_as_one_value():
    app, seen = make_app()
    result = runner.invoke(app, ["run", "x", "--left", "3", "--right", "r"])
    assert result.exit_code == 0, result.output
    assert seen == [("x", Pair(3, "r"))]
    assert runner.invoke(app, ["run", "y"]).exit_code == 0 and seen[-1] == ("y", Pair())
    assert runner.invoke(app, ["run", "y", "--left", "-1"]).exit_code == 2  # the option's own range check


@pytest.mark.parametrize(
    ("fail", "code", "text"),
    [
        ("usage", 2, "error: bad value"),
        ("gate", 1, "error: gate missed"),
        ("dep", 3, "error: no TensorRT"),
        ("bug", 4, "internal error"),
        ("exit", 7, ""),
    ],
)
def test_errors_map_to_exit_codes(fail, code, text):
    app, _ = make_app()
    result = runner.invoke(app, ["run", "x", "--fail", fail])
    assert result.exit_code == code
    assert text in result.output + result.stderr
    if fail == "usage":
        assert "hint: try another" in result.stderr and "Traceback" not in result.stderr


def test_option_names_repeated_across_groups_are_refused():
    def twice(*, a: Pair, b: Pair) -> None: ...

    with pytest.raises(TypeError, match="repeat"):
        expand_groups(twice)


def test_command_modules_never_import_the_entry_point():
    """cli.py imports every command module; a command module importing rescompile.cli back would close a cycle."""
    import ast
    from pathlib import Path

    import rescompile.commands

    for path in Path(rescompile.commands.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n == "rescompile.cli" or n.startswith("rescompile.cli.") for n in names), path.name
