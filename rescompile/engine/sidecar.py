"""The ``model.plan.json`` sidecar: what built a plan, and whether this machine may run it.

The plan itself stays the plain serialized engine (trtexec and DeepStream load it); our
metadata lives beside it. A plan runs only on the TensorRT version and GPU model that built it
(unless built version- or hardware-compatible), so the runner checks the sidecar first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescompile.errors import UsageError

SCHEMA = "rescompile.plan/1"


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU a plan was built on or is about to run on."""

    name: str
    compute_capability: tuple[int, int]
    l4t: str | None = None  # Jetson: the L4T release (/etc/nv_tegra_release), e.g. "36.4.0"
    sm_count: int | None = None  # multiprocessors: every Orin module is named "Orin", this tells AGX/NX/Nano apart
    module: str | None = None  # Jetson: /proc/device-tree/model, e.g. "NVIDIA Jetson AGX Orin Developer Kit"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "compute_capability": list(self.compute_capability),
            "l4t": self.l4t,
            "sm_count": self.sm_count,
            "module": self.module,
        }


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def make_sidecar(
    *,
    tensorrt_version: str,
    device: DeviceInfo,
    settings: dict[str, Any],
    onnx_sha256: str,
    plan_sha256: str,
    timing_cache: str | None,
    fusion: dict[str, Any] | None,
    version_compatible: bool = False,
) -> dict[str, Any]:
    """The sidecar document (JSON-serializable, keys sorted on write)."""
    return {
        "schema": SCHEMA,
        "tensorrt_version": tensorrt_version,
        "gpu": device.to_dict(),
        "settings": settings,
        "onnx_sha256": onnx_sha256,
        "plan_sha256": plan_sha256,
        "timing_cache": timing_cache,
        "residual_fusion": fusion,
        "version_compatible": version_compatible,
    }


def read_sidecar(plan: Path) -> dict[str, Any]:
    """Load ``<plan>.json``.

    Raises:
        UsageError: missing, unreadable, or not a rescompile plan sidecar.
    """
    path = sidecar_path(plan)
    if not path.is_file():
        raise UsageError(
            f"{plan} has no sidecar {path.name}: cannot tell which TensorRT and GPU built it",
            hint="rebuild the engine with `rescompile engine`",
        )
    from rescompile.readers import read_json_object

    doc = read_json_object(path, "rescompile plan sidecar")
    if doc.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a rescompile plan sidecar (schema {SCHEMA})")
    return doc


def compatibility_problems(sidecar: dict[str, Any], tensorrt_version: str, device: DeviceInfo) -> list[str]:
    """Why this machine cannot run the plan described by ``sidecar`` (empty: it can).

    The TensorRT version must match exactly (a version-compatible plan needs the same major or
    a later one); the GPU must be the same model (name) and compute capability.
    """
    problems = []
    built = str(sidecar.get("tensorrt_version", "?"))
    if sidecar.get("version_compatible"):
        from rescompile.engine.settings import parse_version

        if parse_version(tensorrt_version).major < parse_version(built).major:
            problems.append(f"the plan was built (version-compatible) with TensorRT {built}, this is {tensorrt_version}")
    elif built != tensorrt_version:
        problems.append(f"the plan was built with TensorRT {built}, this machine has {tensorrt_version}")
    gpu = sidecar.get("gpu") or {}
    cc = tuple(gpu.get("compute_capability") or ())
    if cc != tuple(device.compute_capability):
        problems.append(
            f"the plan was built for compute capability {'.'.join(map(str, cc)) or '?'}, "
            f"this GPU is {device.compute_capability[0]}.{device.compute_capability[1]}"
        )
    if gpu.get("name") != device.name:
        problems.append(f"the plan was built on {gpu.get('name')!r}, this GPU is {device.name!r}")
    # Same name and compute capability on every Orin module: the SM count and the module tell them apart
    # (recorded since issue 20; an older sidecar without them is not refused for lacking them).
    if gpu.get("sm_count") is not None and device.sm_count is not None and gpu["sm_count"] != device.sm_count:
        problems.append(f"the plan was built on a GPU with {gpu['sm_count']} SMs, this one has {device.sm_count}")
    if gpu.get("module") and device.module and gpu["module"] != device.module:
        problems.append(f"the plan was built on {gpu['module']!r}, this is {device.module!r}")
    return problems
