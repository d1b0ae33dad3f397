"""Output-folder I/O: whole-or-nothing writes, content hashes; a full disk or a failing one is an EnvironmentFault.

Every file rescompile writes goes through :func:`write_bytes_atomic` (or :func:`writing` for a
writer that needs a path of its own, e.g. ``np.savez``): a temporary file beside the target,
renamed into place only when complete. When the machine fails the write (ENOSPC, EDQUOT, EROFS,
EIO, EMFILE: :data:`rescompile.errors.FAULT_ERRNOS`), the temporary file is removed, the target
keeps its previous content and the error is an :class:`~rescompile.errors.EnvironmentFault`
(exit 5) naming the file, how many bytes the step needed and how many were free.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from rescompile.errors import environment_fault


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content.

    Raises:
        EnvironmentFault: the disk failed the read (EIO) or no file may be opened (EMFILE).
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        fault = environment_fault(exc, path)
        if fault is None:
            raise
        raise fault from None
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place.

    Raises:
        EnvironmentFault: the machine failed the write (disk full, quota, read-only, I/O error, too many
            open files); ``path`` keeps its previous content and no temporary file is left.
    """
    path = Path(path)
    with writing(path, needed=len(data)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


@contextmanager
def writing(path: Path, *, needed: int | Callable[[], int | None] | None = None, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed to ``path`` when the block ends, removed on any error.

    Args:
        path: the file to (re)place.
        needed: the bytes being written (or a function returning them), for the message of a full disk.
        suffix: the temporary file's suffix (``np.savez`` appends ``.npz`` to a name without it).

    Raises:
        EnvironmentFault: an OSError of :data:`rescompile.errors.FAULT_ERRNOS` in the block or the rename.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if tmp is not None:
            _unlink(tmp)
            tmp = None
        fault = environment_fault(exc, path, needed=needed() if callable(needed) else needed)
        if fault is None:
            raise
        raise fault from None
    finally:
        if tmp is not None:  # any other error, Ctrl-C, SIGTERM
            _unlink(tmp)


def _unlink(tmp: str) -> None:
    try:
        Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or failing file system: there is nothing more to do about it here


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_onnx(path: Path, model: onnx.ModelProto) -> None:
    write_bytes_atomic(path, model.SerializeToString(deterministic=True))
