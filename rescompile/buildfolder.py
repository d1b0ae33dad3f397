"""A build folder as one typed value: the artifacts it holds, its manifest, and their integrity.

Every command that reads a build folder goes through :func:`open_build`. It reads
``manifest.json`` defensively (missing, unreadable, not JSON, not an object, not a
rescompile manifest: a UsageError naming the file, exit 2), refuses a build whose gates
failed unless the caller allows it, and :meth:`BuildFolder.file` checks an artifact's size
and sha256 against the manifest before handing out its path, so a model changed after the
build (a flipped byte, a file swapped for another) is refused instead of being validated or
deployed. ``verify=False`` (the CLI's ``--no-verify-hashes``) is the explicit override for
people who edit a built model by hand; callers record it in their report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescompile.errors import UsageError, read_failure
from rescompile.io import sha256_file

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "rescompile.manifest/1"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; anything this big is not one

# Every artifact name, once: the stages that write them, the bundle, deploy and the readers import these.
FP32_ONNX = "model.fp32.onnx"
SIMPLIFIED_ONNX = "model.simplified.onnx"
QDQ_PLAN = "qdq_plan.json"
RANGES = "ranges.json"
CALIB_STATS = "calib_stats.npz"
INT8_ONNX = "model.int8.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
JUNIT_XML = "junit.xml"
REPORT_HTML = "report.html"
REPORT_FILES = (REPORT_JSON, REPORT_MD, JUNIT_XML, REPORT_HTML)  # written by rescompile.report.write
ARTIFACTS = (FP32_ONNX, SIMPLIFIED_ONNX, QDQ_PLAN, RANGES, CALIB_STATS, INT8_ONNX, *REPORT_FILES)
# Written only when asked for: --equalize (the equalized float model) and --bias-correction (every layer's shift).
EQUALIZED_ONNX = "model.equalized.onnx"
BIAS_CORRECTION = "bias_correction.json"
OPTIONAL_ARTIFACTS = (EQUALIZED_ONNX, BIAS_CORRECTION)
# Written only with backend "tensorrt", by rescompile.engine.tensorrt (the sidecar is PLAN + ".json": engine.sidecar).
PLAN = "model.plan"
PLAN_SIDECAR = f"{PLAN}.json"
PLAN_LAYERS = f"{PLAN}.layers.json"
ENGINE_ARTIFACTS = (PLAN, PLAN_SIDECAR, PLAN_LAYERS)
# What `deploy` writes on the device (rescompile.deploy.device) and fetches back over ssh (deploy.remote).
DEPLOY_REPORT = "deploy.json"
DEPLOY_REPORT_MD = "deploy.md"
ORT_SIDECAR = f"{INT8_ONNX}.json"  # the ONNX Runtime deployment's sidecar beside its model.int8.onnx
DEPLOY_FETCHED = (DEPLOY_REPORT, DEPLOY_REPORT_MD, JUNIT_XML)

FAILED_SUFFIX = ".failed"  # a build that misses a gate is published to <out>.failed/, beside the passing one
NO_VERIFY_FLAG = "--no-verify-hashes"
ALLOW_FAILED_FLAG = "--allow-failed-build"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class IntegrityError(UsageError):
    """An artifact is missing or does not match the sha256 recorded in manifest.json (exit code 2)."""


class ForeignManifest(UsageError):
    """``manifest.json`` is a JSON object without a rescompile schema: another tool's file, not a damaged build."""


def failed_path(out: Path) -> Path:
    """Where a build into ``out`` that missed a gate is published: ``<out>.failed`` beside it."""
    return out.with_name(out.name + FAILED_SUFFIX)


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``: a JSON object with a supported schema and a well-formed artifact table.

    Raises:
        UsageError: the file is missing, unreadable, not JSON, not an object, or not a rescompile manifest.
    """
    if not path.is_file():
        raise UsageError(f"{path.parent} is not a rescompile build (no {MANIFEST})")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise UsageError(f"{path} is not a rescompile manifest (larger than {MAX_MANIFEST_BYTES >> 20} MiB)")
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise read_failure(exc, "manifest", path) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(
            f"{path} is damaged: not valid JSON ({str(exc).splitlines()[0][:120]})", hint="rebuild into this folder, or remove it"
        ) from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not a rescompile manifest: a JSON object expected, found {_JSON_TYPES.get(type(doc), 'a value')}")
    schema = doc.get("schema")
    if not isinstance(schema, str) or not schema.startswith("rescompile.manifest/"):
        raise ForeignManifest(f"{path} is not a rescompile manifest (no 'schema': '{MANIFEST_SCHEMA}')")
    if schema != MANIFEST_SCHEMA:
        raise UsageError(f"{path}: manifest schema {schema!r} is not supported", hint="upgrade rescompile")
    artifacts = doc.get("artifacts")
    if not isinstance(artifacts, dict):
        raise UsageError(f"{path} is damaged: 'artifacts' is not an object")
    for name, entry in artifacts.items():
        if (
            not name
            or "/" in name
            or "\\" in name
            or name in (".", "..")
            or not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _SHA256.match(entry["sha256"])
            or type(entry.get("bytes")) is not int
            or entry["bytes"] < 0
        ):
            raise UsageError(f"{path} is damaged: artifact entry {name!r} is not a file name with its sha256 and bytes")
    gates = doc.get("gates")
    if gates is not None and not (isinstance(gates, dict) and isinstance(gates.get("passed"), bool)):
        raise UsageError(f"{path} is damaged: 'gates' is not an object with a boolean 'passed'")
    return doc


@dataclass
class BuildFolder:
    """An opened build folder. :meth:`file` hands out artifact paths, checked against the manifest first."""

    path: Path
    manifest: dict[str, Any]
    verify: bool = True
    allowed_failed: bool = False  # opened although its gates failed (recorded by :meth:`record`)
    _checked: set[str] = field(default_factory=set, repr=False)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.manifest["artifacts"]  # type: ignore[no-any-return]

    @property
    def passed(self) -> bool | None:
        """Whether the build's gates passed: the manifest's record, else (older builds) its report's; None if unknown."""
        gates = self.manifest.get("gates")
        if isinstance(gates, dict):
            return bool(gates["passed"])
        if REPORT_JSON not in self.artifacts:
            return None
        try:
            report = json.loads(self.file(REPORT_JSON).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        passed = report.get("passed") if isinstance(report, dict) else None
        return passed if isinstance(passed, bool) else None

    @property
    def failed_gates(self) -> list[str]:
        gates = self.manifest.get("gates")
        failed = gates.get("failed") if isinstance(gates, dict) else None
        return [str(g) for g in failed] if isinstance(failed, list) else []

    @property
    def config(self) -> dict[str, Any]:
        """The build's recorded configuration ({} when absent)."""
        return self._section("config") or {}

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The recorded preprocessing recipe, or None when the manifest has none."""
        return self._section("preprocess")

    def _section(self, key: str) -> dict[str, Any] | None:
        value = self.manifest.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise UsageError(f"{self.manifest_path} is damaged: {key!r} is not an object")
        return value

    def has(self, name: str) -> bool:
        """True when the manifest lists ``name``."""
        return name in self.artifacts

    def file(self, name: str) -> Path:
        """The path of artifact ``name``, after checking its size and sha256 against the manifest.

        Raises:
            IntegrityError: the file is missing, or (unless opened with ``verify=False``) it is not
                listed in the manifest or does not match the size and sha256 recorded there.
        """
        path = self.path / name
        if not path.is_file():
            where = f"listed in {self.manifest_path}" if self.has(name) else "a build writes it"
            raise IntegrityError(f"{path} is missing ({where})", hint="rebuild into this folder")
        if not self.verify or name in self._checked:
            return path
        entry = self.artifacts.get(name)
        if entry is None:
            raise IntegrityError(
                f"{path} is not listed in {self.manifest_path}: it was not written by this build", hint="rebuild into this folder"
            )
        size = path.stat().st_size
        digest = sha256_file(path) if size == entry["bytes"] else None
        if digest != entry["sha256"]:
            found = f"{size} bytes" if digest is None else f"sha256 {digest[:16]}..."
            wrote = f"{entry['bytes']} bytes" if digest is None else f"sha256 {entry['sha256'][:16]}..."
            raise IntegrityError(
                f"{path} does not match {MANIFEST}: {found}, the build wrote {wrote}",
                hint="the file changed after the build; rebuild, or restore the file the build wrote",
            )
        self._checked.add(name)
        return path

    def verify_all(self) -> None:
        """Check every artifact the manifest lists (IntegrityError on the first mismatch)."""
        for name in self.artifacts:
            self.file(name)

    @property
    def overrides(self) -> list[str]:
        """The integrity overrides this folder was opened with, as CLI flags."""
        return ([] if self.verify else [NO_VERIFY_FLAG]) + ([ALLOW_FAILED_FLAG] if self.allowed_failed else [])

    def warnings(self, *, failed: bool = True) -> list[str]:
        """One line per override in effect (``failed``: include the failed-gates one), for the terminal and reports."""
        lines = []
        if not self.verify:
            lines.append(f"{NO_VERIFY_FLAG}: the artifacts of {self.path} are used without checking their sha256 against {MANIFEST}")
        if failed and self.allowed_failed:
            lines.append(
                f"{ALLOW_FAILED_FLAG}: {self.path} is a build whose gates failed"
                + (f" ({', '.join(self.failed_gates)})" if self.failed_gates else "")
            )
        return lines

    def record(self) -> dict[str, Any]:
        """What a report records about the build it read: folder, whether hashes were checked, gates, overrides."""
        return {"folder": str(self.path), "hashes_verified": self.verify, "gates_passed": self.passed, "overrides": self.overrides}


def open_build(path: Path, *, verify: bool = True, allow_failed: bool = False) -> BuildFolder:
    """Open a build folder: read its manifest safely and refuse a build whose gates failed.

    Args:
        path: the build folder (holding manifest.json).
        verify: check each artifact handed out by :meth:`BuildFolder.file` against the manifest's sha256.
        allow_failed: accept a build whose gates failed (e.g. ``<out>.failed``); otherwise refuse it.

    Raises:
        UsageError: not a folder, no or a damaged manifest, or a build whose gates failed.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"build folder not found: {path}")
    if not path.is_dir():
        raise UsageError(f"{path} is not a build folder")
    build = BuildFolder(path, read_manifest(path / MANIFEST), verify)
    if build.passed is False:
        if not allow_failed:
            failed = f" ({', '.join(build.failed_gates)})" if build.failed_gates else ""
            raise UsageError(
                f"{path} is a build whose gates failed{failed}; refusing to use it",
                hint="use a build that passed its gates; this one is kept for its report",
            )
        build.allowed_failed = True
    return build


def build_of(path: Path, *, verify: bool = True, allow_failed: bool = False) -> BuildFolder | None:
    """The build folder holding file ``path`` (its folder has a rescompile manifest.json that lists it), else None.

    Another tool's ``manifest.json`` (valid JSON, no rescompile schema) means no build; a damaged one is a UsageError.
    """
    path = Path(path)
    if not path.is_file() or not (path.parent / MANIFEST).is_file():
        return None
    try:
        build = open_build(path.parent, verify=verify, allow_failed=allow_failed)
    except ForeignManifest:
        return None
    return build if build.has(path.name) else None


def checked_file(path: Path, *, verify: bool = True, allow_failed: bool = False) -> Path:
    """``path`` itself; when it belongs to a build folder, checked against that build's manifest first."""
    build = build_of(path, verify=verify, allow_failed=allow_failed)
    return build.file(Path(path).name) if build is not None else Path(path)
