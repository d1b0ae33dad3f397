"""User-facing error types: each carries a message, an optional hint and a CLI exit code.

Faults of the machine around a command are not bugs and not bad input: an ``OSError`` whose
errno is in :data:`FAULT_ERRNOS` (disk full, quota, read-only file system, I/O error, too many
open files) becomes an :class:`EnvironmentFault` (exit 5) through :func:`environment_fault`,
and a Ray worker, node or SSH link lost for good is a :class:`WorkerLost` (exit 6).
docs/faults.md lists every fault, what the user sees and what is kept.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class RescompileError(Exception):
    """Bad input or usage: a clear message, no traceback (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(RescompileError):
    """A bad option, path or input file."""


class GateFailed(RescompileError):
    """A validation gate was missed (exit code 1).

    ``result`` is what the command made before the gates failed (a build's BuildResult of
    ``<out>.failed``, a deploy's DeployResult), for callers that show or record it.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, result: object = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class ParityError(RescompileError):
    """A graph rewrite changed the numerics beyond its stated tolerance (exit code 1)."""

    exit_code = 1


class VerificationError(RescompileError):
    """The INT8 graph does not keep the FP32 topology or breaks a placement rule (exit code 1)."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (staging folders removed); the CLI exits 143.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` blocks do not swallow it.
    """


class MissingDependency(RescompileError):
    """The environment lacks something optional, e.g. TensorRT or a GPU (exit code 3)."""

    exit_code = 3


JETSON_TENSORRT_HINT = (
    "on Jetson, TensorRT comes with JetPack: sudo apt install python3-libnvinfer (not the PyPI tensorrt wheel); "
    "in a virtual environment use python3 -m venv --system-site-packages, since a plain venv hides it"
)


def install_hint(module: str, extra: str, tegra_release: str = "/etc/nv_tegra_release") -> str:
    """How to get ``module``: on a Jetson (``/etc/nv_tegra_release`` exists) TensorRT comes from JetPack's apt, else the extra."""
    from pathlib import Path

    if module == "tensorrt" and Path(tegra_release).exists():
        return JETSON_TENSORRT_HINT
    return f"pip install 'rescompile[{extra}]'"


def require(module: str, *, extra: str):  # type: ignore[no-untyped-def]
    """Import an optional dependency or raise MissingDependency saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{module} is not installed or cannot be imported ({exc})", hint=install_hint(module, extra)) from None


class EnvironmentFault(RescompileError):
    """The machine failed the command: disk full, quota exceeded, read-only file system, I/O error, too many open files (exit 5)."""

    exit_code = 5


class WorkerLost(RescompileError):
    """A Ray worker or node, or an SSH link, was lost and retrying did not bring it back (exit 6): run the command again."""

    exit_code = 6


FAULT_ERRNOS = {
    errno.ENOSPC: "free space on that file system, or write somewhere else",
    errno.EDQUOT: "your disk quota is used up: free some of it, or write somewhere else",
    errno.EROFS: "the file system is mounted read-only: write somewhere else",
    errno.EIO: "the disk (or network file system) reported an I/O error: check it (dmesg) and run again",
    errno.EMFILE: "this process may open no more files: raise the limit (ulimit -n) and run again",
    errno.ENFILE: "the system may open no more files: close some programs and run again",
}


def environment_fault(exc: BaseException, path: Path | str | None = None, *, needed: int | None = None) -> EnvironmentFault | None:
    """The :class:`EnvironmentFault` an ``OSError`` (or one in its cause chain) stands for, or None for any other error.

    Args:
        exc: the error caught.
        path: the file being written or read (default: the error's own ``filename``).
        needed: bytes the step was writing, for a full disk or quota ("needed 12.3 MiB, 1.1 MiB free").

    Returns:
        One line naming the path and the errno's meaning, with a hint; None when ``exc`` is not such a fault.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, EnvironmentFault):
            return cause
        if isinstance(cause, OSError) and cause.errno in FAULT_ERRNOS:
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    assert isinstance(cause, OSError)  # noqa: S101 - the loop breaks only on one
    code = cause.errno
    where = path if path is not None else cause.filename
    message = os.strerror(code) if code is not None else str(cause)
    if where is not None:
        message += f": {where}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(Path(where)) if where is not None else None
        sizes = [f"needed {format_bytes(needed)}" if needed is not None else "", f"{format_bytes(free)} free" if free is not None else ""]
        if any(sizes):
            message += f" ({', '.join(s for s in sizes if s)})"
    return EnvironmentFault(message, hint=FAULT_ERRNOS[code])  # type: ignore[index]


def free_bytes(path: Path) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (its nearest existing folder); None when unknown."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def format_bytes(n: int) -> str:
    """``n`` bytes for a message: ``812 B``, ``4.0 KiB``, ``12.3 MiB``, ``1.50 GiB``."""
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


def read_failure(exc: OSError, what: str, path: Path | str) -> RescompileError:
    """The error for an ``OSError`` reading or writing ``what`` at ``path``: an EnvironmentFault (exit 5) or a UsageError (exit 2)."""
    fault = environment_fault(exc, path)
    if fault is not None:
        return fault
    return UsageError(f"cannot read {what} {path}: {exc.strerror or exc}")
