"""Publishing a build: --out checked before any work, the folder replaced whole or left as it was, leftovers cleaned."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rescompile.errors import EnvironmentFault, GateFailed, Terminated, UsageError
from rescompile.io import write_text_atomic
from rescompile.publish import check_out, clean_leftovers, staged

MANIFEST = '{"schema": "rescompile.manifest/1", "artifacts": {}}'


def publish(out: Path, text: str, *, fail_gate: bool = False) -> None:
    """One build into ``out`` writing a.txt = ``text`` (published to out.failed when ``fail_gate``)."""
    try:
        with staged(out) as stage:
            write_text_atomic(stage / "manifest.json", MANIFEST)
            write_text_atomic(stage / "a.txt", text)
            if fail_gate:
                raise GateFailed("gate")
    except GateFailed:
        assert fail_gate


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failed_stage_leaves_previous_build_untouched(tmp_path: Path):
    out = tmp_path / "b"
    publish(out, "first")
    with pytest.raises(RuntimeError), staged(out) as stage:
        write_text_atomic(stage / "a.txt", "second")
        raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert names(tmp_path) == ["b"]  # no partial folder left


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Terminated])
def test_interrupt_removes_the_stage_and_keeps_the_build(tmp_path: Path, interrupt: type[BaseException]):
    out = tmp_path / "b"
    publish(out, "first")
    with pytest.raises(interrupt), staged(out) as stage:
        write_text_atomic(stage / "a.txt", "second")
        raise interrupt()
    assert (out / "a.txt").read_text() == "first" and names(tmp_path) == ["b"]


def test_gate_failure_publishes_beside_and_keeps_the_passing_build(tmp_path: Path):
    out = tmp_path / "b"
    publish(out, "good")
    publish(out, "bad", fail_gate=True)
    assert (out / "a.txt").read_text() == "good"  # the passing build is never replaced by a failing one
    assert (tmp_path / "b.failed" / "a.txt").read_text() == "bad"  # CI gets the report and the model
    publish(out, "bad again", fail_gate=True)
    assert (tmp_path / "b.failed" / "a.txt").read_text() == "bad again" and (out / "a.txt").read_text() == "good"
    publish(out, "good again")  # a passing build removes the stale failure: <out>.failed means "the latest failed"
    assert names(tmp_path) == ["b"] and (out / "a.txt").read_text() == "good again"


def test_gate_failure_without_a_previous_build(tmp_path: Path):
    publish(tmp_path / "b", "bad", fail_gate=True)
    assert names(tmp_path) == ["b.failed"]


def test_refuses_foreign_nonempty_folder_and_files(tmp_path: Path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty and holds no rescompile build"):
        check_out(tmp_path)
    with pytest.raises(UsageError, match="is a file"):
        check_out(tmp_path / "mine.txt")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "manifest.json").write_text('{"name": "a web app, not a build"}')
    with pytest.raises(UsageError, match="holds no rescompile build"):
        check_out(tmp_path / "web")
    (tmp_path / "x.failed").mkdir()
    (tmp_path / "x.failed" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"failed-build folder .*x.failed is not empty"):
        check_out(tmp_path / "x")


def test_refuses_a_damaged_previous_build(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"holds a damaged build .*not valid JSON") as exc:
        check_out(tmp_path / "b")
    assert "\n" not in exc.value.message


def test_refuses_out_under_a_regular_file(tmp_path: Path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match=r"cannot create --out .*afile/sub/b: .*afile is a file, not a folder"):
        check_out(tmp_path / "afile" / "sub" / "b")


def test_refuses_the_current_folder_and_its_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", str(here), "..", "sub/../."):
        with pytest.raises(UsageError, match="is the current folder or holds it"):
            check_out(Path(out))
    with pytest.raises(UsageError, match="not a folder a build can replace"):
        check_out(Path("/"))
    assert check_out(Path("build/demo")) == here / "build" / "demo"
    assert names(here) == []  # the check creates nothing


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


@pytest.mark.parametrize(
    ("code", "error", "said"),
    [
        (errno.EIO, EnvironmentFault, r"Input/output error: .*b; could not publish the build, the previous build is unchanged"),
        (errno.EPERM, UsageError, r"could not publish the build to .*Operation not permitted; the previous build is unchanged"),
    ],
)
def test_swap_failure_keeps_the_previous_build_and_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type, said: str
) -> None:
    out = tmp_path / "b"
    publish(out, "first")
    real = os.replace

    def failing(src, dst):  # the second rename of the swap (stage -> out) fails, e.g. the disk went away (EIO: exit 5)
        if Path(dst) == out and ".partial-" in Path(src).name:
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(error, match=said):
        publish(out, "second")
    monkeypatch.undo()
    assert (out / "a.txt").read_text() == "first" and names(tmp_path) == ["b"]


def test_interrupt_during_the_swap_puts_the_previous_build_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "b"
    publish(out, "first")
    real = os.replace

    def interrupted(src, dst):
        if Path(dst) == out and ".partial-" in Path(src).name:
            raise Terminated()  # SIGTERM between the two renames
        return real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(Terminated):
        publish(out, "second")
    monkeypatch.undo()
    assert (out / "a.txt").read_text() == "first" and names(tmp_path) == ["b"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_builds_are_removed_live_ones_kept(tmp_path: Path):
    out = tmp_path / "b"
    publish(out, "first")
    dead = _dead_pid()
    for name in (f".b.partial-{dead}-x1", f".b.old-{dead}-x2", f".b.failed.partial-{dead}-x3", ".b.partial-legacy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.int8.onnx").write_bytes(b"half")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".b.partial-{sleeper.pid}-x4"
        time.sleep(0.1)
        live.mkdir()
        removed = clean_leftovers(out)
        assert sorted(p.name for p in removed) == sorted([f".b.partial-{dead}-x1", f".b.old-{dead}-x2", f".b.failed.partial-{dead}-x3"])
        assert live.is_dir()  # a build still running
        assert (tmp_path / ".b.partial-legacy").is_dir()  # no pid: whose it is cannot be known, left alone
        # The same pid now belongs to a process that started after the folder was last written: not its owner.
        os.utime(live, (time.time() - 3600, time.time() - 3600))
        assert clean_leftovers(out) == [live]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (out / "a.txt").read_text() == "first"


def test_next_build_restores_a_build_killed_mid_swap(tmp_path: Path):
    out = tmp_path / "b"
    publish(out, "first")
    dead = _dead_pid()
    aside = tmp_path / f".b.old-{dead}-abc"
    aside.mkdir()
    os.replace(out, aside / "build")  # killed after moving the previous build aside, before the new one moved in
    publish(out, "second")  # the next build cleans up first...
    assert (out / "a.txt").read_text() == "second" and names(tmp_path) == ["b"]
    aside.mkdir()
    os.replace(out, aside / "build")
    assert clean_leftovers(out) == [aside]  # ...and the previous build is back where it was
    assert (out / "a.txt").read_text() == "second"


def test_atomic_write_respects_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "x.json"
        write_text_atomic(p, "{}")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert json.loads(p.read_text()) == {}
