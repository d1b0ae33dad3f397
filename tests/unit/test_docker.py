"""docker/: every Dockerfile runs as a non-root user with entry point rescompile, and README shows how to build and run it.

No Docker engine runs here: the images are read, never built (hadolint lints them: tests/integration/test_docker_lint.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def test_the_three_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.jetson"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_non_root_user_and_rescompile_entry_point(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the last USER must not be root"
    assert re.search(r'^ENTRYPOINT \["rescompile"\]$', text, re.M)


def test_readme_gives_build_and_run_lines() -> None:
    readme = (REPO / "README.md").read_text()
    for p in DOCKERFILES:
        kind = p.suffix[1:]
        assert f"docker build -f docker/{p.name} -t rescompile:{kind} ." in readme
        run = [ln for ln in readme.splitlines() if ln.startswith("docker run") and f"rescompile:{kind}" in ln]
        assert run, kind
    assert any("--runtime nvidia" in ln for ln in readme.splitlines() if "rescompile:jetson" in ln and "docker run" in ln)
