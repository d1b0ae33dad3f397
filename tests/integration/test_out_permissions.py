"""The pre-work check of --out against folders the build cannot write (a process without the right to write: integration)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _as_unprivileged() -> list[str]:
    """A command prefix that runs without the right to write anywhere: root loses CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_refuses_a_read_only_folder(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code = (
        "import sys; from rescompile.errors import UsageError; from rescompile.publish import check_out\n"
        "try:\n    check_out(__import__('pathlib').Path(sys.argv[1]))\n"
        "except UsageError as e:\n    print(e.message); sys.exit(2)\n"
    )
    run = subprocess.run(
        [*_as_unprivileged(), sys.executable, "-c", code, str(ro / "sub" / "b")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"cannot write --out {ro}/sub/b: {ro} is not writable (Permission denied)" in run.stdout
    assert names(ro) == []


def _cli(*prefix: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-c", "from rescompile.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300)


def test_refuses_an_existing_empty_read_only_out_before_any_work(tmp_path: Path):
    """The folder exists and is empty: the parent can be written, but publishing renames <out>, which needs <out>
    writable too. A user without the right to write it gets exit 2 before any work, not after all of it."""
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    run = _cli(*_as_unprivileged(), args=["build", "--out", str(out), "-q"])
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"error: cannot write --out {out}: {out} is not writable (Permission denied)" in run.stderr
    assert "export" not in run.stderr and names(tmp_path) == ["ro"] and names(out) == []


def _in_mount_namespace(script: str, folder: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The CLI run as root in a private mount namespace after ``script`` (sh, ``$1`` = ``folder``) mounted something."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m needs CAP_SYS_ADMIN)")
    return _cli("unshare", "-m", "sh", "-c", f'{script} && shift && exec "$@"', "sh", str(folder), args=args)


def test_refuses_a_read_only_mount_as_out_before_any_work(tmp_path: Path):
    """Root, an empty folder bind-mounted read-only on itself (mode bits say writable; the kernel says EROFS): exit 5 before any work."""
    out = tmp_path / "mnt"
    out.mkdir()
    run = _in_mount_namespace('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"', out, ["build", "--out", str(out), "-q"])
    assert run.returncode == 5, run.stdout + run.stderr  # a read-only file system is the machine's fault (docs/faults.md)
    assert f"error: Read-only file system: {out}" in run.stderr
    assert names(tmp_path) == ["mnt"] and names(out) == []


def test_refuses_a_mount_point_as_out(tmp_path: Path):
    """A writable tmpfs mounted at <out>: publishing could not rename it (EBUSY), so it is refused before any work."""
    out = tmp_path / "mnt"
    out.mkdir()
    run = _in_mount_namespace('mount -t tmpfs -o size=1m tmpfs "$1"', out, ["build", "--out", str(out), "-q"])
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"error: cannot write --out {out}: {out} is a mount point, and a build replaces its folder whole" in run.stderr


PUBLISH_THEN_SIGNAL = """
import os, signal, sys, time
from pathlib import Path
from rescompile.commands.base import finish_after_publish
from rescompile.publish import staged
finish_after_publish()  # what rescompile.cli.main does
with staged(Path(sys.argv[1])) as stage:
    (stage / "a.txt").write_text("new")
os.kill(os.getpid(), getattr(signal, sys.argv[2]))  # lands after the build was published (the summary, shutdown)
time.sleep(60)
sys.exit(5)
"""


@pytest.mark.parametrize(("sig", "said"), [("SIGTERM", "terminated"), ("SIGINT", "interrupted")])
def test_a_signal_after_publishing_ends_the_process_with_the_builds_code(tmp_path: Path, sig: str, said: str):
    out = tmp_path / "b"
    run = subprocess.run(
        [sys.executable, "-c", PUBLISH_THEN_SIGNAL, str(out), sig],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert run.returncode == 0, run.stderr  # not -15 / -2: the build is complete
    assert f"{said} after the build was published: {out}/ is complete; exit 0" in run.stderr
    assert (out / "a.txt").read_text() == "new" and names(tmp_path) == ["b"]
