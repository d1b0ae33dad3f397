"""Environment faults injected at the one I/O layer (rescompile.io) and at the CLI's error mapping (docs/faults.md).

Each errno of ``errors.FAULT_ERRNOS`` is raised where the bytes are written (the file object's
``write``), where the file is renamed into place, and from anywhere below a command; the result
must be one line naming the path and the errno's meaning (exit 5), the previous file unchanged
and no temporary file left.
"""

from __future__ import annotations

import errno
import io as stdio
import os
from pathlib import Path
from typing import Any

import pytest
import typer

import rescompile.io as rio
from rescompile.commands import base
from rescompile.errors import FAULT_ERRNOS, EnvironmentFault, UsageError, environment_fault, read_failure
from rescompile.readers import read_bytes

FAULTS = [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE]


class _FailingFile(stdio.BytesIO):
    def __init__(self, code: int, name: str) -> None:
        super().__init__()
        self.code, self.name_ = code, name

    def write(self, data: Any) -> int:
        raise OSError(self.code, os.strerror(self.code), self.name_)


@pytest.mark.parametrize("code", FAULTS, ids=[errno.errorcode[c] for c in FAULTS])
def test_a_failed_write_is_one_line_the_previous_file_stays_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    target = tmp_path / "report.json"
    target.write_text("previous")
    real_open = open

    def failing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return _FailingFile(code, str(path)) if "w" in mode else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rio, "open", failing_open, raising=False)  # the io layer's own open: nothing else is touched
    with pytest.raises(EnvironmentFault) as caught:
        rio.write_json(target, {"a": 1})
    fault = caught.value
    assert fault.exit_code == 5 and "\n" not in fault.message
    assert fault.message.startswith(f"{os.strerror(code)}: {target}")
    if code in (errno.ENOSPC, errno.EDQUOT):
        assert "(needed 13 B, " in fault.message and " free)" in fault.message  # '{\n  "a": 1\n}\n'
    assert fault.hint == FAULT_ERRNOS[code]
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize("code", FAULTS, ids=[errno.errorcode[c] for c in FAULTS])
def test_a_failed_rename_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    real = os.replace

    def failing(src: Any, dst: Any) -> None:
        if Path(dst) == target:
            raise OSError(code, os.strerror(code))
        real(src, dst)

    monkeypatch.setattr(rio.os, "replace", failing)
    with pytest.raises(EnvironmentFault, match=f"^{os.strerror(code)}: {target}"):
        rio.write_bytes_atomic(target, b"new bytes")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_other_os_errors_are_not_environment_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert environment_fault(OSError(errno.EACCES, "Permission denied")) is None
    assert environment_fault(ValueError("x")) is None
    monkeypatch.setattr(rio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        rio.write_bytes_atomic(tmp_path / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_fault_is_found_through_the_cause_chain_and_reads_are_faults_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x.npz")
        except OSError as inner:
            raise RuntimeError("numpy could not save") from inner
    except RuntimeError as outer:
        fault = environment_fault(outer)
    assert fault is not None and fault.message.startswith("No space left on device: /data/x.npz")
    f = tmp_path / "calib.yaml"
    f.write_text("x")
    assert isinstance(read_failure(OSError(errno.EIO, "Input/output error"), "sweep file", f), EnvironmentFault)
    assert isinstance(read_failure(OSError(errno.EACCES, "Permission denied"), "sweep file", f), UsageError)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: _raise(errno.EIO, p) if Path(p) == f else real_open(p, *a, **k))
    with pytest.raises(EnvironmentFault) as caught:
        read_bytes(f, "sweep file")
    assert caught.value.message == f"Input/output error: {f}"


def _raise(code: int, path: Any) -> Any:
    raise OSError(code, os.strerror(code), str(path))


@pytest.mark.parametrize("code", FAULTS, ids=[errno.errorcode[c] for c in FAULTS])
def test_the_cli_maps_an_os_error_from_anywhere_to_exit_5_in_one_line(capsys: pytest.CaptureFixture[str], code: int) -> None:
    with pytest.raises(typer.Exit) as caught, base.exit_codes():
        raise OSError(code, os.strerror(code), "/media/sd/build/model.int8.onnx")  # e.g. raised by a library below us
    assert caught.value.exit_code == 5
    err = capsys.readouterr().err
    line = err.splitlines()[0]
    assert line.startswith(f"error: {os.strerror(code)}: /media/sd/build/model.int8.onnx")
    assert line.endswith(" free)") == (code in (errno.ENOSPC, errno.EDQUOT))  # what is free where it failed, when known
    assert "Traceback" not in err and err.splitlines()[1].startswith("hint: ")


def test_sizes_are_readable() -> None:
    from rescompile.errors import format_bytes

    assert [format_bytes(n) for n in (812, 4096, 12_900_000, 3 << 30)] == ["812 B", "4.0 KiB", "12.3 MiB", "3.00 GiB"]
