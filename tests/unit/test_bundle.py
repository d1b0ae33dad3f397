"""The bundle format: deterministic bytes, and unpacking that refuses every hostile tar before writing anything."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rescompile.deploy.bundle import MANIFEST, MEMBERS, SCHEMA, npz_bytes, open_bundle, pack
from rescompile.errors import UsageError

MEMBER_BYTES = {name: f"content of {name}\n".encode() for name in MEMBERS}


def _good() -> bytes:
    return pack(dict(MEMBER_BYTES), {"model": {"name": "t"}})


def _manifest(members: dict[str, bytes]) -> bytes:
    table = {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in members.items()}
    return json.dumps({"schema": SCHEMA, "members": table}).encode()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar written member by member, exactly as given (names, types and links are not checked here)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _hostile(extra: tuple[tarfile.TarInfo, bytes | None], *, listed: dict[str, bytes] | None = None) -> bytes:
    """A valid bundle (manifest listing ``listed``, default every member) with ``extra`` slipped in after the manifest."""
    members = dict(MEMBER_BYTES) if listed is None else listed
    return _tar([_file(MANIFEST, _manifest(members)), extra, *(_file(n, d) for n, d in members.items())])


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    a, b = _good(), _good()
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        infos = tar.getmembers()
    assert [m.name for m in infos] == [MANIFEST, *MEMBERS]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in infos} == {(0, 0, 0, "", "", 0o644)}
    path = tmp_path / "m.rcb"
    path.write_bytes(a)
    bundle = open_bundle(path, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(MEMBERS)
    for name, data in MEMBER_BYTES.items():
        assert bundle.file(name).read_bytes() == data
    assert bundle.sha256 == hashlib.sha256(a).hexdigest()


def test_npz_bytes_is_deterministic_and_loads_without_pickle(tmp_path: Path) -> None:
    from rescompile.readers import load_npz

    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.array([1, 2, 3])}
    assert npz_bytes(arrays) == npz_bytes(arrays)
    (tmp_path / "a.npz").write_bytes(npz_bytes(arrays))
    loaded = load_npz(tmp_path / "a.npz")
    assert np.array_equal(loaded["x"], arrays["x"]) and np.array_equal(loaded["y"], arrays["y"])


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        (_file("/etc/evil", b"x"), "absolute path"),
        (_file("../evil", b"x"), "'..'"),
        (_file("sub/../../evil", b"x"), "'..'"),
        (_file("sub/evil", b"x"), "not a flat file name"),
        (_special("model.int8.onnx", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_special("ranges.json", tarfile.LNKTYPE, "bundle.json"), "is a link"),
        (_special("dev", tarfile.CHRTYPE), "device"),
        (_special("blk", tarfile.BLKTYPE), "device"),
        (_special("fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (_special("folder", tarfile.DIRTYPE), "folder"),
        (_file("extra.py", b"import os"), "not listed"),
        (_file("model.int8.onnx", b"content of model.int8.onnx\n"), "appears twice"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written(tmp_path: Path, entry: tuple[tarfile.TarInfo, bytes | None], said: str) -> None:
    path = tmp_path / "evil.rcb"
    path.write_bytes(_hostile(entry))
    with pytest.raises(UsageError, match="not a safe rescompile bundle") as err:
        open_bundle(path, tmp_path / "out")
    assert said in err.value.message
    assert not (tmp_path / "out").exists()
    assert not Path("/etc/evil").exists() and not (tmp_path / "evil").exists()


def test_a_changed_member_is_refused(tmp_path: Path) -> None:
    members = dict(MEMBER_BYTES)
    listed = _manifest(members)
    members["model.int8.onnx"] = b"content of model.int8.onnX\n"  # same size, one byte flipped
    path = tmp_path / "m.rcb"
    path.write_bytes(_tar([_file(MANIFEST, listed), *(_file(n, d) for n, d in members.items())]))
    with pytest.raises(UsageError, match="does not match its sha256"):
        open_bundle(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_size_missing_member_and_manifest_not_first(tmp_path: Path) -> None:
    members = dict(MEMBER_BYTES)
    path = tmp_path / "m.rcb"
    longer = {**members, "gates.json": b"{}\n" * 40}
    path.write_bytes(_tar([_file(MANIFEST, _manifest(members)), *(_file(n, d) for n, d in longer.items())]))
    with pytest.raises(UsageError, match="bytes, bundle.json says"):
        open_bundle(path, tmp_path / "a")
    path.write_bytes(_tar([_file(MANIFEST, _manifest(members)), *(_file(n, d) for n, d in members.items() if n != "reference.npz")]))
    with pytest.raises(UsageError, match="missing: reference.npz"):
        open_bundle(path, tmp_path / "b")
    path.write_bytes(_tar([*(_file(n, d) for n, d in members.items()), _file(MANIFEST, _manifest(members))]))
    with pytest.raises(UsageError, match="first member is 'model.int8.onnx'"):
        open_bundle(path, tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_manifest_that_lists_unsafe_names_or_lacks_members(tmp_path: Path) -> None:
    path = tmp_path / "m.rcb"
    bad = {"schema": SCHEMA, "members": {"../x": {"sha256": "0" * 64, "bytes": 1}}}
    path.write_bytes(_tar([_file(MANIFEST, json.dumps(bad).encode())]))
    with pytest.raises(UsageError, match="not a flat file name"):
        open_bundle(path, tmp_path / "o")
    few = dict(list(MEMBER_BYTES.items())[:2])
    path.write_bytes(_tar([_file(MANIFEST, _manifest(few)), *(_file(n, d) for n, d in few.items())]))
    with pytest.raises(UsageError, match="does not list"):
        open_bundle(path, tmp_path / "o")
    path.write_bytes(_tar([_file(MANIFEST, b'{"schema": "other/1", "members": {}}')]))
    with pytest.raises(UsageError, match="no 'schema'"):
        open_bundle(path, tmp_path / "o")


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 40, b"\x1f\x8b\x08\x00" + b"\x00" * 600])
def test_not_a_bundle_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.rcb"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="bundle"):
        open_bundle(path, tmp_path / "o")


def test_truncated_bundle_is_refused(tmp_path: Path) -> None:
    data = _good()
    path = tmp_path / "m.rcb"
    path.write_bytes(data[: data.index(b"content of ranges.json") + 5])  # cut inside a member
    with pytest.raises(UsageError):
        open_bundle(path, tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("gates", "said"),
    [
        (b"not json", "not valid JSON"),
        (b'{"min_agreement": "high"}', "field 'min_agreement'"),
        (b'{"min_agreement": 150}', "out of range"),
        (b"[1]", "not an object"),
    ],
)
def test_bundled_gates_are_checked_like_any_input(tmp_path: Path, gates: bytes, said: str) -> None:
    path = tmp_path / "m.rcb"
    path.write_bytes(pack({**MEMBER_BYTES, "gates.json": gates}, {}))  # hashes match: the content itself is wrong
    with pytest.raises(UsageError) as err:
        _ = open_bundle(path, tmp_path / "o").gates
    assert said in str(err.value)
