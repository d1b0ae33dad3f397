"""Publish a build folder whole: check ``--out`` first, stage beside it, swap it in at the end.

A build is written into ``.<name>.partial-<pid>-*`` beside ``<out>`` and renamed into place
only when complete, so ``<out>`` holds a complete build or the previous one, never a mix:

- gates passed: the stage replaces ``<out>``; a stale ``<out>.failed`` is removed; files the previous
  build in ``<out>`` does not own (not in its manifest: ``model.plan`` from ``rescompile engine``) are
  kept, and the log says so;
- a gate failed (GateFailed): the stage replaces ``<out>.failed`` (report + failing model),
  ``<out>`` keeps the previous passing build;
- any other error, Ctrl-C (KeyboardInterrupt) or SIGTERM (:class:`~rescompile.errors.Terminated`,
  raised by the CLI's handler): the stage is removed, nothing is published. One that lands after
  the rename finds the build published (:func:`last_published`): the CLI says so and exits as the
  build did (0, or 1 for ``<out>.failed``).

If the process dies without a chance to clean up (SIGKILL, power loss), the pid in the
leftover's name tells the next build into the same ``--out`` that its owner is gone: it
removes the leftover, and puts a previous build back if the process died mid-swap.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rescompile.buildfolder import MANIFEST, ForeignManifest, failed_path, read_manifest
from rescompile.errors import EnvironmentFault, GateFailed, UsageError, environment_fault
from rescompile.io import _umask

log = logging.getLogger("rescompile.publish")

_KINDS = ("partial", "old", "probe")
_SWAP_ATTEMPTS = 5  # concurrent builds into one --out: the last one to finish wins


def _is_build(folder: Path) -> bool:
    """True when ``folder`` holds a rescompile manifest; UsageError when it holds a damaged one."""
    if not (folder / MANIFEST).is_file():
        return False
    try:
        read_manifest(folder / MANIFEST)
    except ForeignManifest:
        return False
    return True


def _check_target(target: Path, what: str) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise UsageError(f"{what} {target} is a file, not a folder", hint="choose another --out")
    try:
        empty = not any(target.iterdir())
    except OSError as exc:
        raise UsageError(f"cannot read {what} {target}: {exc.strerror or exc}") from None
    if empty:
        return
    try:
        ours = _is_build(target)
    except UsageError as exc:
        raise UsageError(
            f"{what} {target} holds a damaged build ({exc.message})", hint=f"remove {target} or choose another --out"
        ) from None
    if not ours:
        raise UsageError(f"{what} {target} is not empty and holds no rescompile build", hint="choose another --out")


def check_out(out: Path) -> Path:
    """Refuse, before any work, an ``--out`` a build could not be published to; return it as an absolute path.

    Refused (UsageError, exit 2): the current folder or one holding it (``--out .``), a path
    under a regular file, a folder that cannot be written (the parent, and ``<out>`` and
    ``<out>.failed`` where they exist: checked by creating and removing a probe folder, so it
    holds for root too), a mount point as ``<out>`` (it cannot be renamed), a file, and a
    non-empty folder (``<out>`` or ``<out>.failed``) that holds no rescompile build.
    """
    out = Path(out)
    absolute = Path(os.path.abspath(out))
    if absolute.name in ("", ".", ".."):
        raise UsageError(f"--out {out} is not a folder a build can replace", hint="choose a subfolder, e.g. --out build/demo")
    try:
        cwd = Path.cwd()
    except OSError:
        cwd = None
    if cwd is not None:
        for here in {cwd, Path(os.path.realpath(cwd))}:
            for target in {absolute, Path(os.path.realpath(absolute))}:
                if target == here or target in here.parents:
                    raise UsageError(
                        f"--out {out} is the current folder or holds it: a build replaces its output folder whole",
                        hint="choose a subfolder, e.g. --out build/demo",
                    )
    existing = absolute.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create --out {out}: {existing} is a file, not a folder", hint="choose another --out")
    _check_target(absolute, "--out")
    _check_target(failed_path(absolute), "the failed-build folder")
    # The build is staged in the parent and renamed over <out>: both must be writable, and moving a folder
    # to another parent rewrites its "..", which needs the folder itself writable (an existing, empty,
    # read-only <out> passed the parent's probe and failed only when the build was published).
    for folder in (existing, *(f for f in (absolute, failed_path(absolute)) if f.is_dir())):
        if folder is not existing and os.path.ismount(folder):
            raise UsageError(
                f"cannot write --out {out}: {folder} is a mount point, and a build replaces its folder whole",
                hint="choose a subfolder of it, e.g. --out " + str(Path(out) / "build"),
            )
        _probe(folder, absolute.name, out)
    return absolute


def _probe(folder: Path, name: str, out: Path) -> None:
    """Create and remove a folder in ``folder``: os.access() trusts mode bits that root ignores, and misjudges
    read-only mounts, NFS root squash and ACLs."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{name}.probe-{os.getpid()}-", dir=folder))
    except OSError as exc:
        fault = environment_fault(exc, folder)  # a read-only or full file system: the machine's fault, not the user's (exit 5)
        if fault is not None:
            raise fault from None
        raise UsageError(
            f"cannot write --out {out}: {folder} is not writable ({exc.strerror or exc})", hint="choose a folder you can write to"
        ) from None


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where that is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, clock ticks after boot
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, folder: Path) -> bool:
    """True while the build that made ``folder`` may still run: process ``pid`` exists and is not younger than it."""
    if pid == os.getpid():
        return True  # another build in this very process (e.g. a thread of a Python caller)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return True
    started = _process_start(pid)
    try:
        touched = folder.stat().st_mtime
    except OSError:
        return False
    # A process that started after the folder was last written cannot have made it: the pid was reused.
    return started is None or started <= touched + 2.0


def _leftovers(out: Path) -> Iterator[tuple[Path, Path, str, int]]:
    """(leftover folder, the folder it belongs to, kind, pid) for every pid-tagged leftover of ``out``."""
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for dest in (out, failed_path(out)):
        for kind in _KINDS:
            prefix = f".{dest.name}.{kind}-"
            for p in entries:
                if not p.name.startswith(prefix):
                    continue
                pid, sep, _ = p.name.removeprefix(prefix).partition("-")
                if sep and pid.isdigit() and p.is_dir() and not p.is_symlink():
                    yield p, dest, kind, int(pid)


def clean_leftovers(out: Path) -> list[Path]:
    """Remove the staging folders of builds into ``out`` whose process is gone; return what was removed.

    A dead build's ``.old-*`` folder that still holds the previous build while ``out`` is
    missing (killed between the two renames of the swap) is put back first.
    """
    removed = []
    for folder, dest, kind, pid in _leftovers(out):
        if _owner_alive(pid, folder):
            continue
        previous = folder / "build"
        if kind == "old" and previous.is_dir() and not os.path.lexists(dest):
            os.replace(previous, dest)
            log.info("restored the previous build %s (its replacement was killed mid-swap)", dest)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            log.info("removed %s (left by build process %d, which no longer runs)", folder, pid)
    return removed


@dataclass(frozen=True)
class Published:
    """A build this process published: ``folder`` is complete (``passed`` False: it is ``<out>.failed``)."""

    folder: Path
    passed: bool


_published: Published | None = None
on_published: Callable[[Published], None] | None = None  # the CLI's hook: a signal from now on must not look like a failure


def last_published() -> Published | None:
    """What this process published since :func:`forget_published` (the CLI asks when Ctrl-C or SIGTERM arrives)."""
    return _published


def forget_published() -> None:
    global _published
    _published = None


def _note_published(dest: Path, passed: bool) -> None:
    global _published
    _published = Published(dest, passed)
    if on_published is not None:
        on_published(_published)


def _swap(stage: Path, dest: Path, *, passed: bool = True) -> None:
    """Rename ``stage`` to ``dest``; the folder ``dest`` held is moved aside first and removed after.

    Exception-safe: whatever interrupts it (an OSError, Ctrl-C, SIGTERM) puts the previous ``dest``
    back before it propagates, unless the rename had happened: then ``dest`` is noted as published
    (:func:`last_published`) before the interrupt propagates. The caller removes ``stage``.
    """
    os.chmod(stage, 0o777 & ~_umask())
    for attempt in range(_SWAP_ATTEMPTS):
        old: Path | None = None
        moved = False
        try:
            if os.path.lexists(dest):
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
                try:
                    os.replace(dest, old / "build")
                    moved = True
                except FileNotFoundError:  # another build moved it away meanwhile
                    pass
            os.replace(stage, dest)
            _note_published(dest, passed)
        except BaseException as exc:
            if not os.path.lexists(stage) and os.path.lexists(dest):  # interrupted just after the swap completed
                _note_published(dest, passed)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
                raise
            if moved and not os.path.lexists(dest):
                os.replace(old / "build", dest)  # type: ignore[operator]
                moved = False
            if old is not None and not moved:
                shutil.rmtree(old, ignore_errors=True)
            retry = isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST)
            if retry and attempt + 1 < _SWAP_ATTEMPTS:
                continue  # a concurrent build published between our two renames: move it aside too
            if isinstance(exc, OSError):
                kept = "the previous build is unchanged" if os.path.lexists(dest) else "nothing was published"
                fault = environment_fault(exc, dest)
                if fault is not None:
                    raise type(fault)(f"{fault.message}; could not publish the build, {kept}", hint=fault.hint) from None
                raise UsageError(f"could not publish the build to {dest}: {exc.strerror or exc}; {kept}") from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return


def _remove(folder: Path) -> None:
    """Remove a previous build folder: renamed aside first, so readers never see it half-deleted."""
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-{os.getpid()}-", dir=folder.parent))
    try:
        os.replace(folder, aside / "build")
    except OSError:
        pass
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, published when the block ends (see the module docstring).

    Yields:
        The staging folder to write the build into.

    Raises:
        UsageError: ``out`` cannot be published to (see :func:`check_out`), checked before the block runs.
        EnvironmentFault: the machine failed a write in the block (a full disk...): the message adds what ``out`` keeps.
    """
    out = check_out(out)
    clean_leftovers(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        try:
            yield stage
        except GateFailed:
            _publish(stage, failed_path(out), passed=False)
            raise
        except Exception as exc:  # a full or failing disk (exit 5): say what the user keeps, the fault hit the staging folder
            fault = environment_fault(exc)
            if fault is None:
                raise
            kept = f"{out} keeps the previous build" if _is_stale_failed(out) else "nothing was published"
            raise EnvironmentFault(f"{fault.message}; {kept}", hint=fault.hint) from None
        _publish(stage, out, passed=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone after a swap; removed here after any error or interrupt
    stale = failed_path(out)
    if stale.is_dir() and _is_stale_failed(stale):
        _remove(stale)
        log.info("removed %s: the build that failed there was replaced by one that passed in %s", stale, out)


def _publish(stage: Path, dest: Path, *, passed: bool) -> None:
    """Swap ``stage`` in as ``dest``, keeping the files a user put into the previous ``dest`` (see :func:`carry_over`)."""
    kept = carry_over(dest, stage)
    _swap(stage, dest, passed=passed)
    if kept:
        log.warning(
            "kept %s in %s/: not written by rescompile (made from the previous build? remake it from this one)",
            ", ".join(kept),
            dest,
        )


def carry_over(previous: Path, stage: Path) -> list[str]:
    """Copy into ``stage`` what the build in ``previous`` does not own; return those names.

    A build owns its ``manifest.json`` and the artifacts it lists; anything else in the folder (``model.plan``
    from ``rescompile engine <out>``, a user's notes) was put there later and survives a rebuild, unless the new
    build writes a file of that name. Hard links where possible (no copy of a large engine), else copies.
    """
    try:
        owned = {MANIFEST, *read_manifest(previous / MANIFEST)["artifacts"]}
    except (UsageError, OSError):
        return []  # no build there (an empty folder) or an unreadable one (refused by check_out before any work)
    kept = []
    for entry in sorted(previous.iterdir()):
        if entry.name in owned or entry.name.startswith(f".{previous.name}.probe-") or os.path.lexists(stage / entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, stage / entry.name)
        kept.append(entry.name)
    return kept


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _is_stale_failed(folder: Path) -> bool:
    try:
        return _is_build(folder)
    except UsageError:
        return False
