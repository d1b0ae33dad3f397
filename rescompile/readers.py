"""Untrusted input files: one safe reader per container format; every failure is a UsageError naming the file.

Every file the CLI reads comes from the user, or from whoever handed them the file. The
readers here check that the path is a readable regular file, say what a file really is when
it is not what was asked for (a JSON file given as a checkpoint is called JSON text, an
``.npy`` array named ``.npz`` is called an ``.npy`` array), and turn every failure of the
decoder underneath (json, PyYAML, zipfile, numpy's header parser) into one UsageError:
exit 2 with one clear line, never a traceback. Format-specific readers (checkpoints,
images, ranges.json, ...) build on these and check their own content; an ONNX file is read here (``read_onnx``).
"""

from __future__ import annotations

import json
import os
import reprlib
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rescompile.errors import UsageError, read_failure

T = TypeVar("T")

MAX_TEXT_BYTES = 64 << 20  # JSON, YAML and calibration-cache text: far above any real one
_NPY_MAGIC = b"\x93NUMPY"
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 4, 2


def short(value: Any) -> str:
    """A bounded ``repr`` for messages (a YAML alias bomb or a huge list stays one short line)."""
    return _short.repr(value)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (decoders write whole paragraphs)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def check_file(path: Path | str, what: str) -> Path:
    """``path`` as a Path when it is an existing, readable regular file.

    Raises:
        UsageError: it does not exist, is a folder or not a regular file, or cannot be read.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise UsageError(f"{what} not found: {path}")
        if path.is_dir():
            raise UsageError(f"{what} {path} is a folder, not a file")
        if not path.is_file():
            raise UsageError(f"{what} {path} is not a regular file")
    except OSError as exc:  # e.g. a name too long, a permission denied on a parent folder; EIO is the machine's (exit 5)
        raise read_failure(exc, what, path) from None
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {what} {path}: permission denied")
    return path


def read_bytes(path: Path | str, what: str, *, limit: int | None = None) -> bytes:
    """The bytes of a file (at most ``limit``; a bigger file is a UsageError)."""
    path = check_file(path, what)
    try:
        size = path.stat().st_size
        if limit is not None and size > limit:
            raise UsageError(f"{what} {path} is {size / 2**20:.0f} MiB; a {what} is at most {limit / 2**20:.0f} MiB")
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise read_failure(exc, what, path) from None


def describe(head: bytes) -> str:
    """What the first bytes of a file look like, for messages ("JSON text", "a zip archive", ...)."""
    if not head:
        return "an empty file"
    stripped = head.lstrip()
    kinds = (
        (_NPY_MAGIC, "a NumPy .npy array"),
        (b"PK\x03\x04", "a zip archive"),
        (b"PK\x05\x06", "an empty zip archive"),
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x1f\x8b", "a gzip file"),
        (b"\x89HDF", "an HDF5 file (Keras?)"),
        (b"TRT-", "a TensorRT calibration cache"),
        (b"\x80", "a pickle"),
    )
    for magic, name in kinds:
        if head.startswith(magic):
            return name
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32:
        return "a safetensors file"
    if stripped[:1] in (b"{", b"[") and _is_text(head):
        return "JSON text"
    if stripped[:5].lower() in (b"<!doc", b"<html"):
        return "an HTML page"
    if _is_text(head):
        return "a text file"
    return "binary data of an unknown kind"


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 4:  # a multi-byte character cut at the end of ``data`` is still text
            return False
    return b"\x00" not in data


def read_text(path: Path | str, what: str, *, limit: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file (a binary file is a UsageError saying what it looks like)."""
    data = read_bytes(path, what, limit=limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        kind = describe(data[:64])
        if kind in ("a text file", "JSON text"):
            raise UsageError(f"{path} is not a {what}: byte {exc.start} is not UTF-8 text (a binary or damaged file?)") from None
        raise UsageError(f"{path} is not a {what}: it is {kind}") from None
    if "\x00" in text:
        raise UsageError(f"{path} is not a {what}: it holds NUL bytes ({describe(data[:64])})")
    return text


def parse_text_file(path: Path | str, what: str, parse: Callable[[str], T]) -> T:
    """Read ``path`` as text and ``parse`` it; every UsageError names the file (once)."""
    try:
        return parse(read_text(path, what))
    except UsageError as exc:
        if str(path) in exc.message:
            raise
        raise UsageError(f"{path}: {exc.message}", hint=exc.hint) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, source: str, what: str) -> Any:
    """``json.loads`` without NaN/Infinity; errors (including nesting too deep) are a UsageError."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise UsageError(f"{source} is not a {what}: its JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"{source} is not a {what}: not valid JSON ({first_line(exc)})") from None


def read_json_object(path: Path | str, what: str) -> dict[str, Any]:
    """A JSON file holding one object (a mapping); anything else is a UsageError naming what it holds."""
    doc = parse_json(read_text(path, what), str(path), what)
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not a {what}: it holds a JSON {type(doc).__name__}, not an object")
    return doc


def read_yaml(path: Path | str, what: str) -> Any:
    """A YAML document, loaded with ``yaml.safe_load`` (no Python objects)."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise UsageError(f"{path} is not a {what}: its YAML is nested too deeply") from None
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # the constructors raise ValueError/TypeError on odd scalars
        raise UsageError(f"{path} is not valid YAML: {first_line(exc)}") from None


def read_onnx(path: Path | str):  # type: ignore[no-untyped-def]
    """Load an ONNX file or raise UsageError naming the problem (what the file is, when it is not ONNX)."""
    import onnx

    path = check_file(path, "ONNX file")
    try:
        model = onnx.load(str(path))
    except MemoryError:
        raise UsageError(f"ONNX file {path} does not fit in memory") from None
    except Exception as exc:  # protobuf raises several types for a corrupt file
        with open(path, "rb") as fh:
            kind = describe(fh.read(64))
        what = "" if kind == "binary data of an unknown kind" else f"it is {kind}; "
        raise UsageError(f"{path} is not a readable ONNX model ({what}{type(exc).__name__}: {first_line(exc)})") from None
    if not model.graph.node:
        raise UsageError(f"{path} holds an empty ONNX graph")
    return model


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, checked before any allocation: no objects, size consistent with its header."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
        if dtype.hasobject:
            raise UsageError(f"{path}: array {info.filename[:-4]!r} holds Python objects; rescompile loads arrays without pickle")
        count = int(np.prod(shape, dtype=object))
        header = fh.tell()
        if count * dtype.itemsize != info.file_size - header:
            raise ValueError(
                f"array {info.filename[:-4]!r}: its header promises {count * dtype.itemsize} bytes, "
                f"the archive holds {info.file_size - header}"
            )
        arr = np.empty(count, dtype)
        reader: Any = fh  # ZipExtFile is a BufferedIOBase: readinto fills the whole buffer unless the member ends
        if count and reader.readinto(arr.view(np.uint8).data) != count * dtype.itemsize:
            raise ValueError(f"array {info.filename[:-4]!r} is truncated")
    return arr.reshape(shape, order="F" if fortran else "C")


def load_npz(path: Path | str, what: str = ".npz archive") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, in archive order, without pickle.

    Each member's header is checked against the member's size before memory is allocated, so
    a header that promises 10^12 rows is an error, not an allocation.

    Raises:
        UsageError: not a zip archive (an ``.npy`` array is named as such), a corrupt or
            truncated member, object arrays, or arrays too large for memory.
    """
    path = check_file(path, what)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
        if head.startswith(_NPY_MAGIC):
            raise UsageError(f"{path} is a NumPy .npy array, not a .npz archive", hint=f"rename it to {Path(path).stem}.npy")
        if not head.startswith(b"PK"):
            raise UsageError(f"{path} is not a {what}: it is {describe(head)}")
        out: dict[str, np.ndarray] = {}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not an .npy array")
                out[info.filename[:-4]] = _npz_member(zf, info, path)
        return out
    except UsageError:
        raise
    except MemoryError:
        raise UsageError(f"{path}: its arrays do not fit in memory") from None
    except (
        zipfile.BadZipFile,
        zlib.error,
        ValueError,
        OSError,
        EOFError,
        KeyError,
        NotImplementedError,
        RuntimeError,
        SyntaxError,
        TypeError,
        OverflowError,
        tokenize.TokenError,
    ) as exc:
        # zipfile and numpy's header parser (tokenize, ast.literal_eval) raise these for corrupt archives
        raise UsageError(f"{path} is not a readable {what} ({type(exc).__name__}: {first_line(exc)})") from None


def _convert(value: Any, hint: Any, what: str, where: str) -> Any:
    """``value`` checked against ``hint`` (nested dataclasses built from mappings, lists as tuples); UsageError naming ``where``."""
    import dataclasses
    import types
    import typing

    def bad() -> UsageError:
        return UsageError(f"{what}: field {where!r} is {short(value)}, expected {getattr(hint, '__name__', hint)}")

    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        options = [h for h in args if h is not type(None)]
        for h in options[:-1]:
            try:
                return _convert(value, h, what, where)
            except UsageError:
                continue
        return _convert(value, options[-1], what, where)
    if hint is type(None):
        if value is None:
            return None
        raise bad()
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, what, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad()
        return [_convert(v, item, what, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise bad()
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise bad()
        return tuple(_convert(v, h, what, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, items, strict=True)))
    if origin is dict:
        k, v = typing.get_args(hint)
        if not isinstance(value, dict) or not all(_fits_plain(a, k) for a in value):
            raise bad()
        return {a: _convert(b, v, what, f"{where}.{a}") for a, b in value.items()}
    if not _fits_plain(value, hint):
        raise bad()
    return value


def _fits_plain(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _build(cls: Any, doc: Any, what: str, where: str) -> Any:
    import dataclasses
    import typing

    at = f" {where!r}" if where else ""
    if not isinstance(doc, dict):
        raise UsageError(f"{what}:{at} expected a JSON object, got {type(doc).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in doc if k not in names)
    if unknown:
        raise UsageError(f"{what}:{at} unknown field(s) {short(unknown)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UsageError(f"{what}: missing field {key!r}")
            continue
        values[f.name] = _convert(doc[f.name], hints[f.name], what, key)
    return cls(**values)


def from_mapping(cls: Any, doc: Any, what: str) -> Any:
    """Build dataclass ``cls`` from a JSON mapping, checking every field's type (a wrong file is a UsageError).

    Nested dataclass fields (also in lists, dicts and unions) are built from their mappings, and a
    ``tuple[...]`` field from a JSON list. ``what`` names the record in messages
    (``qdq_plan.json activation``); a bad nested field is named by its path (``accuracy.candidate.top1``).
    """
    return _build(cls, doc, what, "")
