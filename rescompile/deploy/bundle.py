"""The deployment bundle (``model.rcb``): one tar a device needs, written byte for byte the same every time.

A bundle is an uncompressed POSIX (ustar) tar of flat file names. The first member is
``bundle.json``: the schema, what the bundle holds (model, policy, preprocessing, gates,
reference set, the build it came from) and the sha256 and size of every other member.
Headers carry mtime 0, uid/gid 0, empty owner names and mode 0644; members follow in a fixed
order, so the same build and options give the same bytes.

Reading (:func:`open_bundle`) never calls ``tarfile.extract``: each header is checked
(a flat name, a regular file, listed in ``bundle.json``, not seen before, the recorded size),
its bytes are read and hashed, and only when every listed member matched are the files
written to a fresh folder and handed out. Absolute paths, ``..``, links, devices, folders,
members the manifest does not list, duplicates, a wrong size or hash: a UsageError (exit 2).

This module imports neither torch nor onnxsim when reading (the device side); writing
(:func:`make_bundle`, on the workstation) uses ONNX Runtime for the FP32 reference logits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.buildfolder import INT8_ONNX, QDQ_PLAN, RANGES, BuildFolder
from rescompile.errors import UsageError

SCHEMA = "rescompile.bundle/1"
MANIFEST = "bundle.json"
BLOCKS = "blocks.json"
CALIB_CACHE = "calib.cache"  # TensorRT calibration cache: DLA on TensorRT 10 needs implicit INT8 ranges
PREPROCESS = "preprocess.json"
GATES = "gates.json"
REFERENCE = "reference.npz"
MEMBERS = (INT8_ONNX, QDQ_PLAN, BLOCKS, RANGES, CALIB_CACHE, PREPROCESS, GATES, REFERENCE)
DEFAULT_REFERENCE_SIZE = 256
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBER_BYTES = 8 << 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------- writing


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def pack(members: dict[str, bytes], meta: dict[str, Any]) -> bytes:
    """The bundle's bytes: ``bundle.json`` (``meta`` + every member's sha256 and size), then the members in order.

    Raises:
        UsageError: a member name that is not a flat file name.
    """
    for name in members:
        if not _NAME.match(name) or name == MANIFEST:
            raise UsageError(f"bundle member name {name!r} is not a flat file name")
    table = {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in members.items()}
    manifest = {**meta, "schema": SCHEMA, "members": table}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_member(tar, MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        for name, data in members.items():
            _tar_member(tar, name, data)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` with fixed timestamps (numpy's own savez stamps the current time): same arrays, same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class BundleOptions:
    """What ``rescompile bundle`` takes besides the build folder."""

    reference_size: int = DEFAULT_REFERENCE_SIZE
    val: str | None = None  # validation data for the reference set (default: the build's own choice)
    layout: str = "nchw"
    allow_failed: bool = False
    gates: Any = None  # rescompile.config.Gates overriding the build's accuracy gates (None: the build's)
    threads: int | None = None
    reference_dtype: str = "float16"  # how reference inputs are stored: float16 (half the size) or float32


def reference_set(build: Any, pre: Any, opts: BundleOptions) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """``opts.reference_size`` preprocessed inputs (seeded, stratified), their labels, class names, source name."""
    from rescompile.data.holdout import validation_data
    from rescompile.validate.reference import ValidationInputs

    doc = {**build.manifest, "config": build.config}
    choice = validation_data(opts.val, doc, "", opts.layout, opts.reference_size)
    inputs = ValidationInputs.from_source(choice.val, pre)
    xs, ys = [], []
    for x, y in inputs.batches(64):
        xs.append(np.asarray(x, np.float32))
        if y is not None:
            ys.append(np.asarray(y, np.int64))
    x_all = np.concatenate(xs)[: opts.reference_size]
    y_all = np.concatenate(ys)[: opts.reference_size] if ys else None
    return x_all, y_all, list(inputs.class_names), inputs.name


def bundle_gates(build: Any, override: Any) -> dict[str, Any]:
    """The accuracy gates a device checks: the build's, with ``override`` (flags, a recipe) on top, and how
    they are judged (``mode``; ``default_floor``: False when the build turned the default floor off).

    Latency gates are left out: a workstation's latency says nothing about the device's.
    """
    from rescompile.config import Gates
    from rescompile.validate.gates import ACCURACY_GATES, GATE_OPTIONS, accuracy_gates, check_thresholds, merge_gates

    recorded = build.config.get("gates") or {}
    base = Gates(
        **{k: recorded.get(k) for k in ACCURACY_GATES if isinstance(recorded.get(k), (int, float))},
        **{k: recorded.get(k) for k in GATE_OPTIONS if isinstance(recorded.get(k), (str, bool))},
    )
    gates = accuracy_gates(merge_gates(base, override) if override is not None else base)
    check_thresholds(gates)
    return {k: getattr(gates, k) for k in (*ACCURACY_GATES, *GATE_OPTIONS)}


def make_bundle(build_path: Path, out: Path, opts: BundleOptions | None = None) -> dict[str, Any]:
    """Write ``out`` (a ``.rcb`` bundle) from a build folder; return its ``bundle.json`` document.

    The build is opened with :func:`rescompile.buildfolder.open_build` (every artifact read is
    checked against the build's manifest first). A build whose gates failed is refused unless
    ``opts.allow_failed``; a build with the ``onnxruntime`` placement policy is refused (its
    graph is for ONNX Runtime's CPU kernels; TensorRT fuses the ``tensorrt`` placement).

    Raises:
        UsageError: not a build, changed artifacts, a failed build, the wrong policy, no reference data.
    """
    import onnx

    from rescompile.buildfolder import INT8_ONNX as BUILD_INT8
    from rescompile.buildfolder import QDQ_PLAN as BUILD_PLAN
    from rescompile.buildfolder import RANGES as BUILD_RANGES
    from rescompile.calibrate.trt_cache import DEFAULT_VERSION
    from rescompile.data.preprocess import preprocess_from_dict
    from rescompile.engine.implicit import strip_qdq
    from rescompile.graph.topology import find_residual_blocks
    from rescompile.io import write_bytes_atomic

    opts = opts or BundleOptions()
    if opts.reference_size < 1:
        raise UsageError(f"--reference-size must be at least 1, not {opts.reference_size}")
    build = _open_tensorrt_build(Path(build_path), opts.allow_failed)
    pre = preprocess_from_dict(build.preprocess)
    int8_bytes = build.file(BUILD_INT8).read_bytes()
    int8 = onnx.load_from_string(int8_bytes)
    implicit = strip_qdq(int8)
    cache = _calibration_cache(implicit.ranges)
    blocks = [b.to_dict() for b in find_residual_blocks(int8)]
    ref = _reference(build, pre, opts)
    gates = bundle_gates(build, opts.gates)
    members = {
        INT8_ONNX: int8_bytes,
        QDQ_PLAN: build.file(BUILD_PLAN).read_bytes(),
        BLOCKS: _json_bytes({"residual_blocks": blocks}),
        RANGES: build.file(BUILD_RANGES).read_bytes(),
        CALIB_CACHE: cache,
        PREPROCESS: _json_bytes(pre.to_dict()),
        GATES: _json_bytes(gates),
        REFERENCE: ref.npz,
    }
    meta = {
        "model": {**ref.model, "residual_adds": len(blocks)},
        "policy": build.manifest.get("policy"),
        "gates": gates,
        "reference": ref.summary,
        "calibration_cache": {"tensorrt_version": DEFAULT_VERSION, "tensors": len(implicit.ranges)},
        "build": {
            "manifest_sha256": hashlib.sha256(build.manifest_path.read_bytes()).hexdigest(),
            "gates_passed": build.passed,
            "overrides": build.overrides,
            "versions": build.manifest.get("versions") or {},
        },
    }
    data = pack(members, meta)
    write_bytes_atomic(Path(out), data)
    return json.loads(_member_bytes(data, MANIFEST))


def _open_tensorrt_build(build_path: Path, allow_failed: bool) -> BuildFolder:
    """The verified build at ``build_path``; a UsageError unless it has the ``tensorrt`` placement and a preprocessing recipe."""
    from rescompile.buildfolder import open_build

    build = open_build(build_path, verify=True, allow_failed=allow_failed)
    policy = build.manifest.get("policy")
    if policy != "tensorrt":
        raise UsageError(
            f"{build.path} was built with the {policy!r} placement policy; a device bundle needs the "
            "'tensorrt' placement (TensorRT fuses Conv+Add only with Q/DQ on the shortcut)",
            hint="rebuild with --policy tensorrt (the default)",
        )
    if not build.preprocess:
        raise UsageError(f"{build.manifest_path} records no preprocessing recipe; rebuild with this rescompile")
    return build


def _calibration_cache(ranges: dict[str, float]) -> bytes:
    """The TensorRT calibration cache of the implicit-INT8 ranges (``amax`` per tensor), encoded."""
    from rescompile.calibrate.ranges import TensorRange
    from rescompile.calibrate.trt_cache import DEFAULT_VERSION, to_trt_cache

    return to_trt_cache({t: TensorRange(a, -a, a, "qdq") for t, a in ranges.items()}, version=DEFAULT_VERSION).encode()


@dataclass(frozen=True)
class _Reference:
    """The bundled reference set: the ``reference.npz`` bytes and what ``bundle.json`` says about it."""

    npz: bytes
    model: dict[str, Any]  # name, input_shape, num_classes
    summary: dict[str, Any]  # samples, labelled, source, dtype


def _reference(build: Any, pre: Any, opts: BundleOptions) -> _Reference:
    """The reference inputs (stored as ``opts.reference_dtype``), their labels and the FP32 logits on exactly those inputs."""
    x, y, class_names, source = reference_set(build, pre, opts)
    if opts.reference_dtype == "float16":
        # Stored as float16 (half the bytes; finer than the 8-bit pixels they came from), and the FP32
        # logits are computed on exactly those rounded inputs, so the pair stays consistent.
        x = x.astype(np.float16)
    elif opts.reference_dtype != "float32":
        raise UsageError(f"--reference-dtype must be float16 or float32, not {opts.reference_dtype!r}")
    logits = _fp32_logits(build, x, opts.threads)
    name = _model_name(build)
    ref_meta = {
        "schema": "rescompile.reference/1",
        "runner": "onnxruntime-fp32 (model.simplified.onnx)",
        "source": source,
        "class_names": class_names,
        "preprocess": pre.to_dict(),
        "model": name,
    }
    arrays: dict[str, np.ndarray] = {
        "inputs": np.ascontiguousarray(x),
        "logits": np.ascontiguousarray(logits),
        "meta": np.asarray(json.dumps(ref_meta, sort_keys=True)),
    }
    if y is not None:
        arrays["labels"] = np.ascontiguousarray(y, np.int64)
    return _Reference(
        npz_bytes(arrays),
        {"name": name, "input_shape": [int(d) for d in x.shape[1:]], "num_classes": int(logits.shape[1])},
        {"samples": int(len(x)), "labelled": y is not None, "source": source, "dtype": str(x.dtype)},
    )


def _fp32_logits(build: Any, x: np.ndarray, threads: int | None) -> np.ndarray:
    """The build's simplified FP32 model's logits on ``x`` (ONNX Runtime, batches of 64), float32."""
    from rescompile.buildfolder import SIMPLIFIED_ONNX
    from rescompile.runtime.runners import OnnxRuntimeRunner

    fp32 = OnnxRuntimeRunner(str(build.file(SIMPLIFIED_ONNX)), "onnxruntime-fp32", threads)
    return np.concatenate([fp32.infer(x[s : s + 64].astype(np.float32)) for s in range(0, len(x), 64)]).astype(np.float32)


def _model_name(build: Any) -> str:
    """The model's name: the build's ``--model``, else its source's name, else the build folder's name."""
    source_doc = build.manifest.get("model_source")
    model_doc: dict[str, Any] = source_doc if isinstance(source_doc, dict) else {}
    return str(build.config.get("model") or model_doc.get("name") or build.path.name)


def _member_bytes(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        f = tar.extractfile(name)
        assert f is not None  # noqa: S101 - our own freshly packed bytes
        return f.read()


# ---------------------------------------------------------------- reading


@dataclass
class Bundle:
    """An unpacked, fully hash-checked bundle: its folder and ``bundle.json``."""

    source: Path
    folder: Path
    manifest: dict[str, Any]
    sha256: str  # of the bundle file itself

    def file(self, name: str) -> Path:
        if name not in self.manifest["members"]:
            raise UsageError(f"{self.source} holds no {name}")
        return self.folder / name

    @property
    def gates(self) -> Any:
        from rescompile.config import Gates
        from rescompile.readers import from_mapping, read_json_object
        from rescompile.validate.gates import check_thresholds

        doc = read_json_object(self.file(GATES), f"bundle {GATES}")
        gates = from_mapping(Gates, doc, f"{self.source} {GATES}")
        check_thresholds(gates)
        return gates

    def reference(self) -> Any:
        from rescompile.validate.reference import load_reference

        return load_reference(self.file(REFERENCE))


def _refuse(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is not a safe rescompile bundle: {why}", hint="recreate it with `rescompile bundle`")


def _check_header(path: Path, m: tarfile.TarInfo) -> None:
    name = m.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(path, f"member {name!r} has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise _refuse(path, f"member {name!r} points outside the bundle ('..')")
    if m.issym() or m.islnk():
        raise _refuse(path, f"member {name!r} is a link (to {m.linkname!r})")
    if m.ischr() or m.isblk() or m.isfifo():
        raise _refuse(path, f"member {name!r} is a device or FIFO")
    if m.isdir():
        raise _refuse(path, f"member {name!r} is a folder (a bundle holds flat files)")
    if not m.isreg():
        raise _refuse(path, f"member {name!r} is not a regular file")
    if not _NAME.match(name):
        raise _refuse(path, f"member name {name!r} is not a flat file name")


def _read_manifest(path: Path, data: bytes) -> dict[str, Any]:
    from rescompile.readers import parse_json

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(path, f"{MANIFEST} is not UTF-8 text") from None
    doc = parse_json(text, f"{path} {MANIFEST}", "bundle manifest")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _refuse(path, f"{MANIFEST} has no 'schema': '{SCHEMA}'")
    members = doc.get("members")
    if not isinstance(members, dict):
        raise _refuse(path, f"{MANIFEST} has no member table")
    for name, entry in members.items():
        if (
            not _NAME.match(name)
            or name == MANIFEST
            or not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _SHA256.match(entry["sha256"])
            or type(entry.get("bytes")) is not int
            or not 0 <= entry["bytes"] <= MAX_MEMBER_BYTES
        ):
            raise _refuse(path, f"{MANIFEST} entry {name!r} is not a flat file name with its sha256 and bytes")
    missing = [n for n in MEMBERS if n not in members]
    if missing:
        raise _refuse(path, f"{MANIFEST} does not list {', '.join(missing)}")
    return doc


def open_bundle(path: Path, dest: Path | None = None) -> Bundle:
    """Check and unpack a bundle into a new folder (``dest``, or a temporary one); nothing is written before every hash matched.

    Raises:
        UsageError: not a readable bundle, an unsafe or unlisted member, a member missing, a size or sha256 mismatch.
    """
    from rescompile.readers import check_file, describe

    path = check_file(path, "bundle")
    with open(path, "rb") as fh:
        head = fh.read(512)
    whole = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            whole.update(chunk)
    contents: dict[str, bytes] = {}
    manifest: dict[str, Any] | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            while (m := tar.next()) is not None:
                _check_header(path, m)
                if manifest is None:
                    if m.name != MANIFEST:
                        raise _refuse(path, f"its first member is {m.name!r}, not {MANIFEST}")
                    if m.size > MAX_MANIFEST_BYTES:
                        raise _refuse(path, f"{MANIFEST} is {m.size} bytes")
                    manifest = _read_manifest(path, _read(tar, m))
                    continue
                entry = manifest["members"].get(m.name)
                if entry is None:
                    raise _refuse(path, f"member {m.name!r} is not listed in {MANIFEST}")
                if m.name in contents:
                    raise _refuse(path, f"member {m.name!r} appears twice")
                if m.size != entry["bytes"]:
                    raise _refuse(path, f"member {m.name!r} is {m.size} bytes, {MANIFEST} says {entry['bytes']}")
                data = _read(tar, m)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise _refuse(path, f"member {m.name!r} does not match its sha256 in {MANIFEST}")
                contents[m.name] = data
    except UsageError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable rescompile bundle ({describe(head)}: {exc})") from None
    if manifest is None:
        raise UsageError(f"{path} is not a rescompile bundle (no {MANIFEST}; it is {describe(head)})")
    absent = sorted(set(manifest["members"]) - set(contents))
    if absent:
        raise _refuse(path, f"listed member(s) missing: {', '.join(absent)}")
    folder = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="rescompile-bundle-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    return Bundle(path, folder, manifest, whole.hexdigest())


def _read(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    if f is None:
        raise UsageError(f"member {m.name!r} cannot be read")
    data = f.read()
    if len(data) != m.size:
        raise UsageError(f"member {m.name!r} is truncated")
    return data
