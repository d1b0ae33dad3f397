"""The output folder is replaced whole or left as it was."""

from pathlib import Path

import pytest

from rescompile.errors import GateFailed, UsageError
from rescompile.io import write_text_atomic
from rescompile.pipeline import prepare_out, staged


def test_failed_stage_leaves_previous_build_untouched(tmp_path: Path):
    out = tmp_path / "b"
    with staged(out) as stage:
        write_text_atomic(stage / "manifest.json", "{}")
        write_text_atomic(stage / "a.txt", "first")
    with pytest.raises(RuntimeError), staged(out) as stage:
        write_text_atomic(stage / "a.txt", "second")
        raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no partial folder left


def test_gate_failure_still_publishes(tmp_path: Path):
    out = tmp_path / "b"
    with pytest.raises(GateFailed), staged(out) as stage:
        write_text_atomic(stage / "report.json", "{}")
        raise GateFailed("gate")
    assert (out / "report.json").exists()


def test_refuses_foreign_nonempty_folder_and_files(tmp_path: Path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        prepare_out(tmp_path)
    with pytest.raises(UsageError, match="is a file"):
        prepare_out(tmp_path / "mine.txt")


def test_atomic_write_respects_umask(tmp_path: Path):
    import os

    old = os.umask(0o022)
    try:
        p = tmp_path / "x.json"
        write_text_atomic(p, "{}")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
