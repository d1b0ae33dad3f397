"""What a Jetson reports about itself: module model, power mode, clocks; and how TensorRT is installed there.

Latency on a Jetson means little without its power state: ``nvpmodel -q`` (the power mode, e.g.
``MAXN``), ``jetson_clocks --show`` (whether clocks are pinned: ``jetson_clocks`` sets each
clock's minimum to its maximum) and the GPU's current devfreq clock. Doctor, deploy and
``benchmarks/gpu_smoke.sh`` record them, and latency gets a warning when the mode is not MAXN or
the GPU clock is not locked. The parsers read the line formats these tools print (``NV Power
Mode: <name>``, ``GPU MinFreq=... MaxFreq=... CurrentFreq=...``; unconfirmed against a device
here, so the raw text is always kept next to the parsed values). Every probe returns None on a
machine that is not a Jetson, never raises.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_MODEL = Path("/proc/device-tree/model")
_MODE = re.compile(r"NV Power Mode:\s*(\S+)")
_GPU = re.compile(r"^GPU\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", re.M)
_DEVFREQ = ("/sys/class/devfreq",)

Runner = Callable[[list[str]], str | None]


def is_jetson(path: Path = TEGRA_RELEASE) -> bool:
    """An L4T (Jetson) system: ``/etc/nv_tegra_release`` exists."""
    return path.exists()


def module_model(path: Path = DEVICE_MODEL) -> str | None:
    """The module/board name from the device tree, e.g. ``NVIDIA Jetson AGX Orin Developer Kit``; None elsewhere."""
    try:
        return path.read_bytes().rstrip(b"\x00").decode(errors="replace").strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class PowerState:
    """A Jetson's power mode and clocks at one moment (what a latency number must be read with)."""

    mode: str | None  # nvpmodel's name, e.g. "MAXN", "15W"
    gpu_min_hz: int | None = None
    gpu_max_hz: int | None = None
    gpu_cur_hz: int | None = None
    clocks_locked: bool | None = None  # GPU MinFreq == MaxFreq (what jetson_clocks sets); None: unknown
    raw: dict[str, str] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """Why latency measured now may not be what the device can do."""
        out = []
        if self.mode is not None and not self.mode.upper().startswith("MAXN"):
            out.append(f"power mode is {self.mode}, not MAXN: latency is slower than the module can run (sudo nvpmodel -m 0)")
        if self.clocks_locked is False:
            out.append("GPU clocks are not locked: latency varies with DVFS (sudo jetson_clocks)")
        if self.mode is None and self.clocks_locked is None:
            out.append("power mode and clocks could not be read (nvpmodel / jetson_clocks need root or are missing)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"warnings": self.warnings()}


def parse_nvpmodel(text: str) -> str | None:
    """``nvpmodel -q`` -> the power mode's name (``NV Power Mode: MAXN`` -> ``MAXN``)."""
    m = _MODE.search(text)
    return m.group(1) if m else None


def parse_jetson_clocks(text: str) -> tuple[int, int, int] | None:
    """``jetson_clocks --show`` -> the GPU's (min, max, current) Hz, or None when there is no GPU line."""
    m = _GPU.search(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout + proc.stderr) if proc.stdout or proc.stderr else None


def gpu_devfreq_hz(root: Path = Path("/sys/class/devfreq")) -> int | None:
    """The GPU's current clock from devfreq (a node whose name or device mentions ``gpu``/``ga10b``), or None."""
    try:
        nodes = sorted(root.iterdir())
    except OSError:
        return None
    for node in nodes:
        name = node.name.lower()
        try:
            target = str(node.resolve()).lower()
        except OSError:
            target = name
        if any(k in name or k in target for k in ("gpu", "ga10b", "gv11b", "gb10b")):
            try:
                return int((node / "cur_freq").read_text().strip())
            except (OSError, ValueError):
                continue
    return None


def power_state(run: Runner = _run, tegra: Path = TEGRA_RELEASE, devfreq: Path = Path("/sys/class/devfreq")) -> PowerState | None:
    """The Jetson's power state now, or None when this is not a Jetson."""
    if not is_jetson(tegra):
        return None
    raw: dict[str, str] = {}
    nv = run(["nvpmodel", "-q"])
    if nv:
        raw["nvpmodel -q"] = nv.strip()
    clocks = run(["jetson_clocks", "--show"])
    if clocks:
        raw["jetson_clocks --show"] = clocks.strip()
    mode = parse_nvpmodel(nv or "") or parse_nvpmodel(clocks or "")
    gpu = parse_jetson_clocks(clocks or "")
    cur = gpu[2] if gpu else gpu_devfreq_hz(devfreq)
    if gpu:
        return PowerState(mode, gpu[0], gpu[1], cur, gpu[0] == gpu[1], raw)
    return PowerState(mode, None, None, cur, None, raw)


def tensorrt_install_hint(tegra: Path = TEGRA_RELEASE) -> str:
    """How to get TensorRT's Python bindings here: JetPack's apt package on a Jetson, the extra elsewhere."""
    from rescompile.errors import install_hint

    return install_hint("tensorrt", "tensorrt", str(tegra))
