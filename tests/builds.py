"""The build arguments the tests share, and the one demo build of the session (a fixture in tests/conftest.py).

Imported one way: ``from tests.builds import DEMO_SMALL, LATENCY_RUNS, TINY_MODEL``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

LATENCY_RUNS = ("--latency-runs", "3")  # the fewest timed runs the CLI accepts: latency measured, at little cost
# The demo (ResNet-20 on the bundled digits) with 200 validation samples and batch-1 latency only.
DEMO_SMALL = ("-q", "--val-size", "200", *LATENCY_RUNS, "--latency-batch", "1")
# A user's small model: ResNet-20 on 1x16x16 inputs with 4 classes (pass --calib/--val data of that shape).
TINY_MODEL = ("--in-channels", "1", "--input-size", "16", "--num-classes", "4", *LATENCY_RUNS, "-q")


@dataclass(frozen=True)
class DemoBuild:
    """A passing demo build shared by the session: read it, or copy it (:func:`copy_build`) to change it."""

    folder: Path  # the published build
    out: Path  # the --out it was built with, free again: a test may build there to compare two builds
    args: tuple[str, ...]  # every argument after ``build``
    output: str  # what the build printed


def build_demo(root: Path) -> DemoBuild:
    """``rescompile build --out <root>/out`` with :data:`DEMO_SMALL`, moved to ``<root>/demo``."""
    from typer.testing import CliRunner

    from rescompile.cli import app

    out = root / "out"
    args = ("--out", str(out), *DEMO_SMALL)
    result = CliRunner().invoke(app, ["build", *args])
    assert result.exit_code == 0, result.output
    os.replace(out, root / "demo")
    return DemoBuild(root / "demo", out, args, result.output)


def copy_build(build: Path, dest: Path) -> Path:
    """A copy of ``build`` at ``dest`` (for a test that changes or rebuilds it)."""
    shutil.copytree(build, dest)
    return dest
