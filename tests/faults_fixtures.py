"""Fault fixtures (imported by the conftest of tests/integration): a small real file system, filled to the last byte."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(kib)``: a fresh tmpfs of that size under tmp_path (unmounted after the test)."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {proc.stderr.strip() or proc.returncode}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(fs: Path) -> None:
    """Fill ``fs`` to the last byte (a file named filler)."""
    with open(fs / "filler", "wb", buffering=0) as fh:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            try:
                while True:
                    fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
