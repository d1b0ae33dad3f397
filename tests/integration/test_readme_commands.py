"""README's CI-gate and Jetson-deploy commands, run as written on a copy of the session's demo build in build/demo.

`rescompile build` itself runs as the session's demo build (with fewer validation samples: tests.builds.DEMO_SMALL);
every README command is also parsed against the CLI in tests/unit/test_readme.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from tests.builds import copy_build

README = Path(__file__).parents[2] / "README.md"


def _commands(first: str) -> list[str]:
    lines = README.read_text().splitlines()
    return [" ".join(shlex.split(line, comments=True)) for line in lines if line.startswith(f"rescompile {first} ")]


def test_the_readme_gate_and_deploy_commands_run(small_demo_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    copy_build(small_demo_build, tmp_path / "build" / "demo")
    monkeypatch.chdir(tmp_path)
    (validate,) = _commands("validate")
    (bundle,) = _commands("bundle")
    (deploy,) = _commands("deploy")
    runner = CliRunner()
    result = runner.invoke(app, shlex.split(validate)[1:])
    assert result.exit_code == 0, result.output  # the demo passes the README's gates
    assert "PASS min-agreement" in result.output and "PASS max-top1-drop" in result.output
    result = runner.invoke(app, shlex.split(bundle)[1:])
    assert result.exit_code == 0 and (tmp_path / "demo.rcb").is_file(), result.output
    result = runner.invoke(app, shlex.split(deploy)[1:])
    try:
        import tensorrt  # noqa: F401

        assert result.exit_code == 0, result.output
    except ImportError:  # as README says: exit 3 without TensorRT; the same flow on the CPU
        assert result.exit_code == 3 and "tensorrt" in result.output.lower(), result.output
        result = runner.invoke(app, [*shlex.split(deploy)[1:], "--backend", "onnxruntime"])
        assert result.exit_code == 0 and "PASS min-agreement" in result.output, result.output
