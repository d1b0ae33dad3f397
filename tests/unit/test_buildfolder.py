"""open_build: the manifest read safely, every artifact handed out checked against its sha256, failed builds refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rescompile.buildfolder import (
    INT8_ONNX,
    MANIFEST,
    REPORT_JSON,
    SIMPLIFIED_ONNX,
    IntegrityError,
    build_of,
    checked_file,
    open_build,
)
from rescompile.errors import UsageError
from rescompile.io import sha256_file


def make_build(folder: Path, *, passed: bool | None = True, files: dict[str, bytes] | None = None) -> Path:
    """A build folder with real files and a manifest holding their sizes and hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = files or {
        INT8_ONNX: b"int8 model bytes",
        SIMPLIFIED_ONNX: b"fp32 model bytes",
        REPORT_JSON: json.dumps({"passed": passed}).encode(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest: dict = {
        "schema": "rescompile.manifest/1",
        "artifacts": {n: {"sha256": sha256_file(folder / n), "bytes": len(d)} for n, d in files.items()},
        "config": {"val": "demo-val"},
    }
    if passed is not None:
        manifest["gates"] = {"passed": passed, "failed": [] if passed else ["min-cosine"]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_verified_artifacts_are_handed_out_once_checked(tmp_path: Path):
    build = open_build(make_build(tmp_path / "b"))
    assert build.file(INT8_ONNX) == tmp_path / "b" / INT8_ONNX
    assert build.passed is True and build.config == {"val": "demo-val"} and build.overrides == []
    assert build.record() == {"folder": str(tmp_path / "b"), "hashes_verified": True, "gates_passed": True, "overrides": []}
    build.verify_all()


def test_flipped_byte_is_refused_naming_the_file(tmp_path: Path):
    folder = make_build(tmp_path / "b")
    data = bytearray((folder / INT8_ONNX).read_bytes())
    data[3] ^= 0x01  # same size: only the sha256 tells
    (folder / INT8_ONNX).write_bytes(bytes(data))
    build = open_build(folder)
    build.file(SIMPLIFIED_ONNX)  # the untouched artifact is fine
    with pytest.raises(IntegrityError, match=rf"{INT8_ONNX} does not match manifest.json: sha256") as exc:
        build.file(INT8_ONNX)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


def test_replaced_file_is_refused_by_its_size(tmp_path: Path):
    folder = make_build(tmp_path / "b")
    (folder / INT8_ONNX).write_bytes((folder / SIMPLIFIED_ONNX).read_bytes() + b"more")  # another model in its place
    with pytest.raises(IntegrityError, match=r"does not match manifest.json: 20 bytes, the build wrote 16 bytes"):
        open_build(folder).file(INT8_ONNX)


def test_missing_and_unlisted_artifacts_are_refused(tmp_path: Path):
    folder = make_build(tmp_path / "b")
    (folder / INT8_ONNX).unlink()
    with pytest.raises(IntegrityError, match=rf"{INT8_ONNX} is missing \(listed in .*manifest.json\)"):
        open_build(folder).file(INT8_ONNX)
    (folder / "extra.onnx").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="extra.onnx is not listed in"):
        open_build(folder).file("extra.onnx")


def test_no_verify_is_an_explicit_recorded_override(tmp_path: Path):
    folder = make_build(tmp_path / "b")
    (folder / INT8_ONNX).write_bytes(b"edited by hand")
    build = open_build(folder, verify=False)
    assert build.file(INT8_ONNX).read_bytes() == b"edited by hand"
    assert build.overrides == ["--no-verify-hashes"] and build.record()["hashes_verified"] is False
    assert "without checking their sha256" in build.warnings()[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema": "rescompile.manifest/1", "artif', "is damaged: not valid JSON"),
        ("\xff\xfe garbage", "is damaged: not valid JSON"),
        ("[1, 2]", "a JSON object expected, found an array"),
        ('"a string"', "a JSON object expected, found a string"),
        ("null", "a JSON object expected, found null"),
        ("[" * 100_000, "is damaged: not valid JSON"),
        ("{}", "is not a rescompile manifest"),
        ('{"schema": "rescompile.manifest/9", "artifacts": {}}', "schema 'rescompile.manifest/9' is not supported"),
        ('{"schema": "rescompile.manifest/1", "artifacts": []}', "'artifacts' is not an object"),
        ('{"schema": "rescompile.manifest/1", "artifacts": {"../x": {"sha256": "' + "0" * 64 + '", "bytes": 1}}}', "artifact entry '../x'"),
        ('{"schema": "rescompile.manifest/1", "artifacts": {"a": {"sha256": "xyz", "bytes": 1}}}', "artifact entry 'a'"),
        ('{"schema": "rescompile.manifest/1", "artifacts": {}, "gates": {"passed": "yes"}}', "'gates' is not an object"),
    ],
)
def test_damaged_or_foreign_manifest_is_one_clear_error(tmp_path: Path, text: str, message: str):
    folder = make_build(tmp_path / "b")
    (folder / MANIFEST).write_bytes(text.encode("latin-1"))
    with pytest.raises(UsageError, match=message) as exc:
        open_build(folder)
    assert exc.value.exit_code == 2 and str(folder / MANIFEST) in exc.value.message
    assert "\n" not in exc.value.message


def test_not_a_build_folder(tmp_path: Path):
    with pytest.raises(UsageError, match="build folder not found"):
        open_build(tmp_path / "nope")
    with pytest.raises(UsageError, match=r"is not a rescompile build \(no manifest.json\)"):
        open_build(tmp_path)


def test_failed_build_is_refused_unless_allowed(tmp_path: Path):
    folder = make_build(tmp_path / "b.failed", passed=False)
    with pytest.raises(UsageError, match=r"is a build whose gates failed \(min-cosine\); refusing to use it"):
        open_build(folder)
    build = open_build(folder, allow_failed=True)
    assert build.passed is False and build.overrides == ["--allow-failed-build"]
    assert "gates failed (min-cosine)" in build.warnings()[0] and build.warnings(failed=False) == []


def test_builds_from_before_the_gates_record_use_their_report(tmp_path: Path):
    folder = make_build(tmp_path / "old", passed=None, files={REPORT_JSON: b'{"passed": false}', INT8_ONNX: b"m"})
    with pytest.raises(UsageError, match="gates failed"):
        open_build(folder)
    assert open_build(make_build(tmp_path / "ok", passed=None, files={REPORT_JSON: b'{"passed": true}'})).passed is True


def test_a_file_in_a_build_folder_is_checked_against_it(tmp_path: Path):
    folder = make_build(tmp_path / "b")
    assert checked_file(folder / INT8_ONNX) == folder / INT8_ONNX
    (folder / INT8_ONNX).write_bytes(b"tampered model!!")
    with pytest.raises(IntegrityError, match="does not match"):
        checked_file(folder / INT8_ONNX)
    loose = tmp_path / "loose.onnx"
    loose.write_bytes(b"x")
    assert build_of(loose) is None and checked_file(loose) == loose
    web = tmp_path / "web"  # another tool's manifest.json beside a model: not a build
    web.mkdir()
    (web / MANIFEST).write_text('{"name": "my web app"}')
    (web / "model.onnx").write_bytes(b"x")
    assert build_of(web / "model.onnx") is None


def test_every_artifact_is_named_once_in_buildfolder() -> None:
    import ast

    import rescompile
    from rescompile import buildfolder as bf

    names = {v for k, v in vars(bf).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert set(bf.ARTIFACTS) | set(bf.ENGINE_ARTIFACTS) | set(bf.DEPLOY_FETCHED) | {bf.MANIFEST, bf.ORT_SIDECAR} <= names
    assert len(bf.ARTIFACTS + bf.ENGINE_ARTIFACTS) == len(set(bf.ARTIFACTS + bf.ENGINE_ARTIFACTS))
    assert bf.ARTIFACTS[-4:] == bf.REPORT_FILES and bf.PLAN_SIDECAR == bf.PLAN + ".json"
    root = Path(rescompile.__file__).parent
    spelled = sorted(
        f"{p.relative_to(root)}:{n.lineno} {n.value}"
        for p in root.rglob("*.py")
        if p.name != "buildfolder.py"
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Constant) and n.value in names
    )
    assert spelled == []


def test_the_engine_sidecar_is_the_listed_name() -> None:
    from rescompile import buildfolder as bf
    from rescompile.engine.sidecar import sidecar_path

    assert sidecar_path(Path("out") / bf.PLAN).name == bf.PLAN_SIDECAR
