"""Deploy fixtures (imported by the conftest of tests/integration and tests/gpu): one small demo build and its bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.cli import app


@pytest.fixture(scope="session")
def small_demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A passing demo build (200 validation samples, minimal latency runs)."""
    out = tmp_path_factory.mktemp("deploybuild") / "demo"
    result = CliRunner().invoke(app, ["build", "--out", str(out), "-q", "--val-size", "200", "--latency-runs", "3", "--latency-batch", "1"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def demo_bundle(small_demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``demo.rcb``: 64 reference inputs, gated on top-1 agreement >= 90%."""
    out = tmp_path_factory.mktemp("bundle") / "demo.rcb"
    result = CliRunner().invoke(app, ["bundle", str(small_demo_build), "-o", str(out), "--reference-size", "64", "--min-agreement", "90"])
    assert result.exit_code == 0, result.output
    return out
