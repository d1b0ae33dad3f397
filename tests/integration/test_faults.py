"""Disk faults for real (docs/faults.md): commands writing to a small tmpfs that is full, or mounted read-only.

Mounting needs root (CI runs as root); elsewhere these tests are skipped with the reason, and
tests/unit/test_faults_io.py still injects every errno at the I/O layer. Ray faults are in
test_faults_ray.py, SSH faults in test_faults_ssh.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from tests.faults_fixtures import fill

pytestmark = pytest.mark.slow
runner = CliRunner()


def _snapshot(folder: Path, *, folders: bool = True) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*")) if folders or p.is_file()
    }


BUILD_ARGS = ["-q", "--val-size", "200", "--latency-runs", "3", "--latency-batch", "1"]


def _kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def test_a_build_onto_a_nearly_full_disk_exits_5_in_one_line_and_keeps_the_previous_build(
    small_fs: Callable[[int], Path], small_demo_build: Path
) -> None:
    fs = small_fs(_kib(small_demo_build) + 1024)  # the previous build and 1 MiB: a second build cannot be staged beside it
    out = fs / "demo"
    shutil.copytree(small_demo_build, out)
    before = _snapshot(fs)
    result = runner.invoke(app, ["build", "--out", str(out), *BUILD_ARGS], env={"COLUMNS": "400"})
    assert result.exit_code == 5, result.output
    lines = result.output.splitlines()
    # where the disk fills (a model, or the reports after the summary) depends on sizes: one error line, its hint after it
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    error, hint = lines[errors[0]], lines[errors[0] + 1 :]
    assert error.startswith(f"error: No space left on device: {fs}/.demo.partial-") and "(needed " in error
    assert " free); " in error and error.endswith(f"{out} keeps the previous build")
    assert len(hint) == 1 and hint[0].startswith("hint: free space")
    assert _snapshot(fs) == before  # the previous build byte for byte, and no staging folder left


def test_a_build_onto_a_read_only_disk_exits_5_before_any_work(small_fs: Callable[[int], Path], small_demo_build: Path) -> None:
    fs = small_fs(_kib(small_demo_build) + 1024)
    out = fs / "demo"
    shutil.copytree(small_demo_build, out)
    before = _snapshot(fs)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    result = runner.invoke(app, ["build", "--out", str(out), *BUILD_ARGS], env={"COLUMNS": "400"})
    assert result.exit_code == 5, result.output
    assert result.output.splitlines()[0] == f"error: Read-only file system: {fs}"
    assert _snapshot(fs) == before


def _commands(build: Path, bundle: Path, fs: Path) -> dict[str, list[str]]:
    return {
        "calibrate": ["calibrate", str(build / "model.simplified.onnx"), "--calib", "demo-calib", "-q", "--out", str(fs / "ranges.json")],
        "quantize": ["quantize", str(build / "model.simplified.onnx"), "--ranges", str(build / "ranges.json"), "-o", str(fs / "q.onnx")],
        "bundle": ["bundle", str(build), "-o", str(fs / "demo.rcb"), "--reference-size", "16"],
        "validate": ["validate", str(build), "-q", "--latency-runs", "3", "--latency-batch", "1", "--out", str(fs / "val")],
        "deploy": ["deploy", str(bundle), "--backend", "onnxruntime", "--out", str(fs / "deployed")],
    }


@pytest.mark.parametrize("command", ["calibrate", "quantize", "bundle", "validate", "deploy"])
def test_every_command_writing_to_a_full_disk_exits_5_and_leaves_nothing(
    small_fs: Callable[[int], Path], small_demo_build: Path, demo_bundle: Path, command: str
) -> None:
    fs = small_fs(512)
    fill(fs)
    before = _snapshot(fs, folders=False)
    result = runner.invoke(app, _commands(small_demo_build, demo_bundle, fs)[command], env={"COLUMNS": "400"})
    assert result.exit_code == 5, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("error: "))
    assert line.startswith(f"error: No space left on device: {fs}/") and line.endswith(" free)") and ", 0 B free)" in line
    assert "Traceback" not in result.output
    assert _snapshot(fs, folders=False) == before  # no file half-written (a folder made before the first write may stay, empty)
