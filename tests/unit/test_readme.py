"""Every command in README.md is checked: each `rescompile ...` line parses against the CLI (options, choices, types),
and the test command is `python -m pytest` (what .ci/run calls). The ones cheap enough to run on the session's demo
build run in tests/integration/test_readme_commands.py; the rest (a user's checkpoint and data, a TensorRT device,
Docker) are parsed only."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from rescompile.cli import app

README = Path(__file__).parents[2] / "README.md"


def readme_commands(prefix: str = "rescompile ") -> list[str]:
    """The command lines of README's code blocks that start with ``prefix`` (continuations joined, comments cut)."""
    blocks = re.findall(r"^```\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [" ".join(shlex.split(line, comments=True)) for line in lines if line.startswith(prefix)]


# Typer carries its own copy of Click (typer._click): its UsageError is the base of every parse error.
UsageError = typer.BadParameter.__mro__[1]


def parse(argv: list[str]):  # type: ignore[no-untyped-def]
    """Parse ``argv`` (without ``rescompile``) as the CLI would, without running the command: UsageError when it is wrong."""
    group = typer.main.get_command(app)
    name, *rest = argv
    command = group.commands[name]  # type: ignore[attr-defined]
    return command.make_context(name, rest, parent=group.make_context("rescompile", [name]))


def test_the_readme_gives_the_two_commands_and_an_example_of_each_kind():
    commands = readme_commands()
    assert "rescompile build" in commands and readme_commands("python -m pytest") == ["python -m pytest"]
    for kind in ("build torchvision:", "validate ", "bundle ", "deploy "):
        assert any(c.startswith(f"rescompile {kind}") for c in commands), kind


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_parses(line: str):
    ctx = parse(shlex.split(line)[1:])
    assert ctx.command.name == shlex.split(line)[1]


def test_a_wrong_command_does_not_parse():  # the check can fail
    assert UsageError.__name__ == "UsageError"
    with pytest.raises(UsageError):
        parse(["build", "--no-such-option"])
    with pytest.raises(UsageError):
        parse(["validate", "build/demo", "--min-agreement", "lots"])
