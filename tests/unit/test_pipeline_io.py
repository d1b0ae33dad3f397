"""Publishing a build: --out checked before any work, the folder replaced whole or left as it was, leftovers cleaned."""

from __future__ import annotations

import errno
import json
import os
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
    """A process id no process has now (found by probing down from the kernel's maximum, without starting one)."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path("/proc/sys/kernel/pid_max").exists() else 1 << 22
    for pid in range(top - 1, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    raise AssertionError("every process id is taken")


def test_leftovers_of_dead_builds_are_removed_live_ones_kept(tmp_path: Path):
    out = tmp_path / "b"
    publish(out, "first")
    dead = _dead_pid()
    for name in (f".b.partial-{dead}-x1", f".b.old-{dead}-x2", f".b.failed.partial-{dead}-x3", ".b.partial-legacy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.int8.onnx").write_bytes(b"half")
    live = tmp_path / f".b.partial-{os.getppid()}-x4"  # the parent process runs, and started before the folder was made
    live.mkdir()
    removed = clean_leftovers(out)
    assert sorted(p.name for p in removed) == sorted([f".b.partial-{dead}-x1", f".b.old-{dead}-x2", f".b.failed.partial-{dead}-x3"])
    assert live.is_dir()  # a build still running
    assert (tmp_path / ".b.partial-legacy").is_dir()  # no pid: whose it is cannot be known, left alone
    # The same pid now belongs to a process that started after the folder was last written (2001): not its owner.
    os.utime(live, (1e9, 1e9))
    assert clean_leftovers(out) == [live]
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


def test_refuses_an_existing_out_it_cannot_write_and_a_mount_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """--out exists, is empty and cannot be written (publishing renames it, which rewrites its ".."): refused before
    any work. The probe (really creating a folder) is what decides, so root on a read-only mount is refused too; here
    the probe meets EROFS in <out> only (a real read-only mount and a non-root user: tests/integration/test_out_permissions.py)."""
    import errno
    import tempfile

    out = tmp_path / "b"
    out.mkdir()
    real = tempfile.mkdtemp
    kernel_says = [errno.EACCES, "Permission denied"]

    def unwritable_out(*args, **kwargs):  # the kernel's answer inside an unwritable <out>
        if Path(kwargs["dir"]) == out:
            raise OSError(*kernel_says)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", unwritable_out)
    with pytest.raises(UsageError) as refused:
        check_out(out)
    assert refused.value.message == f"cannot write --out {out}: {out} is not writable (Permission denied)"
    kernel_says[:] = [errno.EROFS, "Read-only file system"]  # a read-only mount: the machine's fault (exit 5, docs/faults.md)
    with pytest.raises(EnvironmentFault) as fault:
        check_out(out)
    assert fault.value.exit_code == 5 and fault.value.message == f"Read-only file system: {out}"
    monkeypatch.undo()
    assert check_out(out) == out and names(out) == []  # the probe leaves nothing behind
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out)
    with pytest.raises(UsageError) as refused:
        check_out(out)
    assert refused.value.message == f"cannot write --out {out}: {out} is a mount point, and a build replaces its folder whole"


@pytest.mark.parametrize(("signal_exc", "said"), [(KeyboardInterrupt, "interrupted"), (Terminated, "terminated")])
@pytest.mark.parametrize("passed", [True, False])
def test_a_signal_after_publishing_exits_as_the_build_did_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signal_exc: type[BaseException], said: str, passed: bool
):
    import typer

    from rescompile.commands.base import exit_codes

    out = tmp_path / "b"
    with pytest.raises(typer.Exit) as done:
        with exit_codes():
            try:
                publish(out, "new", fail_gate=not passed)
            finally:
                raise signal_exc()  # lands after the rename: the build is published, complete
    folder = out if passed else tmp_path / "b.failed"
    assert done.value.exit_code == (0 if passed else 1) and (folder / "a.txt").read_text() == "new"
    assert f"{said} after the build was published: {folder}/ is complete; exit {done.value.exit_code}" in capsys.readouterr().err
    with pytest.raises(typer.Exit) as early:  # before anything was published: 130 / 143 as before
        with exit_codes():
            raise signal_exc()
    assert early.value.exit_code == (130 if signal_exc is KeyboardInterrupt else 143)


def test_interrupt_during_the_swap_after_the_rename_counts_as_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rescompile import publish as publishing

    out = tmp_path / "b"
    publish(out, "first")
    publishing.forget_published()
    real = os.replace

    def renamed_then_interrupted(src, dst):
        real(src, dst)
        if Path(dst) == out:
            raise KeyboardInterrupt  # Ctrl-C lands just after the stage became <out>

    monkeypatch.setattr(os, "replace", renamed_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(out, "second")
    monkeypatch.undo()
    assert publishing.last_published() == publishing.Published(out, True) and (out / "a.txt").read_text() == "second"
    assert names(tmp_path) == ["b"]


def test_a_rebuild_keeps_the_files_the_build_does_not_own_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """model.plan from `rescompile engine <out>` and a user's notes survive a rebuild; what the old build listed in its
    manifest goes with it; a file the new build writes replaces the user's of the same name."""
    entry = {"sha256": "0" * 64, "bytes": 1}
    out = tmp_path / "b"
    with staged(out) as stage:
        write_text_atomic(stage / "manifest.json", json.dumps({"schema": "rescompile.manifest/1", "artifacts": {"old.txt": entry}}))
        write_text_atomic(stage / "old.txt", "owned by the first build")
    (out / "model.plan").write_bytes(b"engine")
    (out / "notes").mkdir()
    (out / "notes" / "n.md").write_text("mine")
    (out / "report.md").write_text("the user's, but the next build writes one")
    with caplog.at_level("WARNING", logger="rescompile.publish"):
        with staged(out) as stage:
            write_text_atomic(stage / "manifest.json", MANIFEST)
            write_text_atomic(stage / "report.md", "the build's")
    assert names(out) == ["manifest.json", "model.plan", "notes", "report.md"]
    assert (out / "model.plan").read_bytes() == b"engine" and (out / "notes" / "n.md").read_text() == "mine"
    assert (out / "report.md").read_text() == "the build's"
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"kept model.plan, notes in {out}/: not written by rescompile")
    assert names(tmp_path) == ["b"]
