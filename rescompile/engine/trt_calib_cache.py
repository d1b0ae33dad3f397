"""TensorRT calibration-cache text (implicit INT8, TensorRT <= 10.x, DLA): write and read.

Format (shared/notes/tensorrt.md): line 1 ``TRT-<version>-EntropyCalibration2`` with the
version as ``(major*100+minor)*100+patch`` for 10.x (10.3.0 -> 100300) and
``major*1000+minor*100+patch`` for 8.x; then ``<tensor name>: <hex>`` per tensor, the float32
scale (amax/127) as big-endian IEEE-754 hex (1.0 -> 3f800000). TensorRT ignores a cache whose
version does not match the runtime, so the version written must be the device's.
"""

from __future__ import annotations

import struct

from rescompile.engine.settings import TrtVersion
from rescompile.errors import UsageError

ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration")


def cache_version(version: TrtVersion) -> int:
    """The number TensorRT writes in the cache header for ``version``.

    Raises:
        UsageError: TensorRT 11 and later have no implicit calibration.
    """
    major, minor = version.major, version.minor
    patch = version.parts[2] if len(version.parts) > 2 else 0
    if major >= 11:
        raise UsageError(f"TensorRT {version} has no calibration caches (implicit INT8 was removed in 11.0)")
    if major >= 10:
        return (major * 100 + minor) * 100 + patch
    return major * 1000 + minor * 100 + patch


def scale_hex(amax: float) -> str:
    """Big-endian float32 hex of the scale amax/127 (``scale_hex(127.0) == "3f800000"``)."""
    return struct.pack(">f", amax / 127.0).hex()


def write_cache(ranges: dict[str, float], version: TrtVersion, algorithm: str = "EntropyCalibration2") -> str:
    """Cache text for ``ranges`` (tensor name -> amax), tensors in sorted order.

    Raises:
        UsageError: an unknown algorithm name, a non-positive or non-finite range, or TensorRT >= 11.
    """
    if algorithm not in ALGORITHMS:
        raise UsageError(f"calibration algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
    lines = [f"TRT-{cache_version(version)}-{algorithm}"]
    for name, amax in sorted(ranges.items()):
        if not (amax > 0 and amax < float("inf")):
            raise UsageError(f"tensor {name!r} has range {amax}; a calibration range must be finite and positive")
        lines.append(f"{name}: {scale_hex(amax)}")
    return "\n".join(lines) + "\n"


def read_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, tensor name -> amax) of a cache's text.

    Raises:
        UsageError: not a TensorRT calibration cache.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise UsageError("not a TensorRT calibration cache (first line must start with TRT-)")
    ranges = {}
    for ln in lines[1:]:
        name, sep, value = ln.rpartition(": ")
        if not sep:
            raise UsageError(f"bad calibration cache line {ln!r}")
        try:
            (scale,) = struct.unpack(">f", bytes.fromhex(value.strip()))
        except (ValueError, struct.error):
            raise UsageError(f"bad calibration cache value in {ln!r}") from None
        ranges[name] = scale * 127.0
    return lines[0], ranges
