"""Which NVIDIA GPU this machine has: name, compute capability, and the L4T release on Jetson.

Asks CUDA through cuda-python (``cuda.bindings.runtime``; each call returns ``(err, value)``,
and without a GPU ``cudaGetDeviceCount`` fails, e.g. error 35), or through torch when
cuda-python is missing. Never raises for "no GPU": returns None with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rescompile.engine.sidecar import DeviceInfo

# First line of /etc/nv_tegra_release, e.g. "# R36 (release), REVISION: 4.0, GCID: ..." (format
# from memory of L4T images, not from a primary source: unconfirmed).
_TEGRA = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


def parse_tegra_release(text: str) -> str | None:
    """``"# R36 (release), REVISION: 4.0, ..."`` -> ``"36.4.0"``; None when the text does not match."""
    m = _TEGRA.search(text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def l4t_release(path: Path = Path("/etc/nv_tegra_release")) -> str | None:
    """The L4T release of a Jetson, or None elsewhere."""
    try:
        return parse_tegra_release(path.read_text(errors="replace"))
    except OSError:
        return None


def cudart_module() -> Any:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (12.8+, 13.x) or ``cuda.cudart`` (older 12.x)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        from cuda import cudart  # type: ignore[attr-defined]  # cuda-python < 12.8 only

        return cudart


def _via_cudart(index: int) -> tuple[DeviceInfo | None, str]:
    cudart = cudart_module()

    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return None, f"cudaGetDeviceCount failed: {err.name} ({int(err)})"
    if count <= index:
        return None, f"{count} CUDA device(s), no device {index}"
    err, prop = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        return None, f"cudaGetDeviceProperties failed: {err.name}"
    raw = prop.name
    name = raw.decode(errors="replace").rstrip("\x00") if isinstance(raw, bytes) else str(raw)
    return DeviceInfo(name, (int(prop.major), int(prop.minor)), l4t_release()), "cuda-python"


def _via_torch(index: int) -> tuple[DeviceInfo | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False"
    if torch.cuda.device_count() <= index:
        return None, f"{torch.cuda.device_count()} CUDA device(s), no device {index}"
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceInfo(torch.cuda.get_device_name(index), (major, minor), l4t_release()), "torch"


def find_gpu(index: int = 0) -> tuple[DeviceInfo | None, str]:
    """The CUDA device ``index`` and how it was found, or (None, why not)."""
    reasons = []
    for probe in (_via_cudart, _via_torch):
        try:
            info, how = probe(index)
        except ImportError as exc:
            reasons.append(f"{probe.__name__[5:]}: not installed ({exc.name})")
            continue
        except Exception as exc:  # a broken driver must not crash `doctor` or the CLI
            reasons.append(f"{probe.__name__[5:]}: {type(exc).__name__}: {exc}")
            continue
        if info is not None:
            return info, how
        reasons.append(f"{probe.__name__[5:]}: {how}")
    return None, "; ".join(reasons)
