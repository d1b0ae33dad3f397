"""TensorRT calibration-cache text: export ranges for implicit INT8 (TensorRT <= 10.x, DLA) and import them.

Format (TensorRT's own): a header ``TRT-<version>-<algorithm>``, then one line per tensor,
``<name>: <scale>`` with the float32 scale ``amax / 127`` as 8 big-endian IEEE-754 hex digits
(1.0 -> ``3f800000``). The version is ``(major*100 + minor)*100 + patch`` for TensorRT 10
(10.3.0 -> ``100300``) and ``major*1000 + minor*100 + patch`` before; TensorRT ignores a
cache whose version is not its own.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from rescompile.calibrate.ranges import TensorRange
from rescompile.errors import UsageError
from rescompile.readers import short

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_VERSION = "10.3.0"  # JetPack 6.1/6.2, the TensorRT that still runs DLA with implicit INT8
_HEADER = re.compile(r"^TRT-(\d{1,12})-(\w{1,64})$")


def version_code(version: str) -> int:
    """TensorRT's cache version number for ``major.minor.patch``.

    Raises:
        UsageError: not a ``major.minor[.patch]`` version.
    """
    parts = version.strip().split(".")
    try:
        major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    except ValueError:
        raise UsageError(f"TensorRT version must look like 10.3.0, not {version!r}") from None
    if major >= 10:
        return (major * 100 + minor) * 100 + patch
    return major * 1000 + minor * 100 + patch


def scale_hex(scale: float) -> str:
    """Big-endian IEEE-754 float32 hex of ``scale`` (1.0 -> ``3f800000``)."""
    return struct.pack(">f", scale).hex()


def hex_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def to_trt_cache(ranges: dict[str, TensorRange], *, version: str = DEFAULT_VERSION, algorithm: str = "EntropyCalibration2") -> str:
    """The calibration-cache text for ``ranges`` (tensors sorted by name, scale = amax / 127)."""
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown TensorRT calibration algorithm {algorithm!r}", hint="one of: " + ", ".join(ALGORITHMS))
    lines = [f"TRT-{version_code(version)}-{algorithm}"]
    for name in sorted(ranges):
        if ":" in name or "\n" in name:
            raise UsageError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        lines.append(f"{name}: {scale_hex(float(np.float32(ranges[name].amax / 127.0)))}")
    return "\n".join(lines) + "\n"


def read_cache(path: Path | str) -> tuple[dict[str, TensorRange], int, str]:
    """Read and parse a calibration-cache file (see :func:`from_trt_cache`); errors name the file."""
    from rescompile.readers import parse_text_file

    return parse_text_file(path, "TensorRT calibration cache", from_trt_cache)


def from_trt_cache(text: str) -> tuple[dict[str, TensorRange], int, str]:
    """Parse a calibration cache: ``({tensor: TensorRange}, version code, algorithm)``.

    ``amax = scale * 127``; min/max are the symmetric ``-amax``/``amax`` (a cache holds no more).

    Raises:
        UsageError: no ``TRT-<version>-<algorithm>`` header, or a malformed line (its number is given).
    """
    lines = text.splitlines()
    m = _HEADER.match(lines[0].strip()) if lines else None
    if m is None:
        raise UsageError("not a TensorRT calibration cache: the first line must be TRT-<version>-<algorithm>")
    ranges: dict[str, TensorRange] = {}
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise UsageError(f"calibration cache line {no} is not '<tensor>: <8 hex digits>': {short(line)}")
        scale = hex_scale(value)
        if not (np.isfinite(scale) and scale > 0):
            raise UsageError(f"calibration cache line {no}: scale {scale} must be finite and positive")
        amax = float(np.float32(scale) * np.float32(127.0))
        ranges[name.strip()] = TensorRange(amax, -amax, amax, "trt-cache")
    return ranges, int(m.group(1)), m.group(2)
