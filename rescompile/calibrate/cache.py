"""Calibration caches keyed by content: the previous build's ranges.json, or its statistics, reused when valid.

The key is the sha256 of the simplified model and the sha256 of the calibration data plus
its preprocessing. ``ranges.json`` with the same key, method, parameters and tensors is
reused as is; with another method, ``calib_stats.npz`` (the collected histograms) gives the
new ranges without running the model again. Anything else is stale and never used.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.buildfolder import CALIB_STATS, RANGES
from rescompile.calibrate.collect import TensorStats
from rescompile.calibrate.ranges import CalibrationResult
from rescompile.errors import UsageError
from rescompile.io import sha256_bytes

STATS_FILE = CALIB_STATS  # the build folder's names, kept when calibration reuses a previous build
RANGES_FILE = RANGES
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so identical statistics give identical bytes


def calibration_key(model_bytes: bytes, data_fingerprint: str, preprocess: dict[str, Any]) -> dict[str, str]:
    """``{"model_sha256", "data_sha256"}``: the model's bytes, and the data's content with its preprocessing."""
    pre = json.dumps(preprocess, sort_keys=True)
    return {"model_sha256": sha256_bytes(model_bytes), "data_sha256": sha256_bytes(f"{data_fingerprint}\n{pre}".encode())}


def stats_to_bytes(stats: dict[str, TensorStats], key: dict[str, str], samples: int, sample: int | None = None) -> bytes:
    """A deterministic .npz of the histograms (loadable with ``allow_pickle=False``)."""
    names = list(stats)
    bins = {s.bins for s in stats.values()} or {0}
    if len(bins) != 1:
        raise UsageError("all tensors of one calibration must use the same number of bins")
    meta = {
        "key": key,
        "samples": samples,
        "names": names,
        "bins": bins.pop(),
        "sample": sample,
        "graph_inputs": [n for n, s in stats.items() if s.graph_input],
    }
    arrays = {
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
        "hist": np.stack([s.hist for s in stats.values()]) if names else np.zeros((0, 0), np.int64),
        "min": np.asarray([s.min for s in stats.values()], np.float64),
        "max": np.asarray([s.max for s in stats.values()], np.float64),
        "edge": np.asarray([s.edge for s in stats.values()], np.float64),
        "count": np.asarray([s.count for s in stats.values()], np.int64),
        "hist_count": np.asarray([s.hist_count for s in stats.values()], np.int64),
        "runs": np.asarray([s.runs for s in stats.values()], np.int64),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def load_stats(path: Path) -> tuple[dict[str, TensorStats], dict[str, str], int, int | None]:
    """Read ``calib_stats.npz``: ``(stats, key, samples, sample)`` (``sample``: histogram values per image, or None).

    Raises:
        UsageError: the file is not a readable statistics file.
    """
    from rescompile.readers import load_npz, parse_json, short

    what = "rescompile calibration statistics file"
    z = load_npz(path, what)
    missing = [k for k in ("meta", "hist", "min", "max", "edge", "count", "hist_count", "runs") if k not in z]
    if missing:
        raise UsageError(
            f"{path} is not a {what} (no {', '.join(missing)} array)",
            hint="write one with rescompile calibrate --stats, or use a build's calib_stats.npz",
        )
    if z["meta"].dtype != np.uint8 or z["meta"].ndim != 1:
        raise UsageError(f"{path} is not a {what} (its 'meta' is not JSON bytes)")
    try:
        meta_text = z["meta"].tobytes().decode()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a {what} (its 'meta' is not UTF-8 text)") from None
    meta = parse_json(meta_text, f"{path} 'meta'", what)
    if not isinstance(meta, dict):
        raise UsageError(f"{path} is not a {what} ('meta' is not a JSON object)")
    names: Any = meta.get("names")
    bins: Any = meta.get("bins")
    samples: Any = meta.get("samples")
    sample: Any = meta.get("sample")
    key: Any = meta.get("key")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)):
        raise UsageError(f"{path}: 'names' must be a list of distinct tensor names, got {short(names)}")
    for label, v, least in (("bins", bins, 1), ("samples", samples, 0), ("sample", sample, 1)):
        if (v is not None or label != "sample") and (isinstance(v, bool) or not isinstance(v, int) or v < least or v > 1 << 40):
            raise UsageError(f"{path}: '{label}' must be a whole number >= {least}, got {short(v)}")
    if not (isinstance(key, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in key.items())):
        raise UsageError(f"{path}: 'key' must map names to hashes, got {short(key)}")
    n = len(names)
    shapes = {"hist": (n, 2 * bins) if n else None, **{k: (n,) for k in ("min", "max", "edge", "count", "hist_count", "runs")}}
    for k, shape in shapes.items():
        arr: np.ndarray = z[k]
        kind = "iu" if k in ("hist", "count", "hist_count", "runs") else "f"
        if (shape is not None and arr.shape != shape) or arr.dtype.kind not in kind:
            want = "integers" if kind == "iu" else "floats"
            raise UsageError(f"{path}: array {k!r} is {arr.dtype} {arr.shape}, expected {shape} of {want} for {n} tensors of {bins} bins")
    lo, hi, edge = z["min"], z["max"], z["edge"]
    z = {**z, **{k: z[k].astype(np.int64) for k in ("hist", "count", "hist_count", "runs")}}  # uint64 > 2^63 turns negative
    counts = [z[k] for k in ("count", "hist_count", "runs", "hist")]
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and np.isfinite(edge).all()) or (lo > hi).any() or (edge < 0).any():
        raise UsageError(f"{path}: min/max/edge must be finite numbers with min <= max and edge >= 0")
    if any((c < 0).any() for c in counts):
        raise UsageError(f"{path}: counts must not be negative")
    hist = z["hist"]
    inputs = meta.get("graph_inputs", [])  # absent in files written before the entropy rule: no graph input known
    if not (isinstance(inputs, list) and all(isinstance(n, str) for n in inputs)):
        raise UsageError(f"{path}: 'graph_inputs' must be a list of tensor names, got {short(inputs)}")
    stats = {
        name: TensorStats(
            name,
            int(bins),
            float(lo[i]),
            float(hi[i]),
            int(z["count"][i]),
            hist[i],
            float(edge[i]),
            int(z["hist_count"][i]),
            int(z["runs"][i]),
            graph_input=name in inputs,
        )
        for i, name in enumerate(names)
    }
    return stats, dict(key), int(samples), None if sample is None else int(sample)


def reuse_ranges(folder: Path, key: dict[str, str], tensors: list[str], method: str, params: dict[str, Any]) -> str | None:
    """The text of ``folder/ranges.json`` when it was made from the same key, method, parameters and tensors."""
    path = folder / RANGES_FILE
    if not path.is_file():
        return None
    from rescompile.readers import read_text

    try:  # a damaged previous ranges.json is not reused (and not an error: calibration runs again)
        text = read_text(path, "ranges file")
        old = CalibrationResult.from_json(text, str(path))
    except UsageError:
        return None
    same = old.key == key and old.method == method and old.params == params and sorted(old.ranges) == sorted(tensors)
    return text if same else None


def reuse_stats(
    folder: Path, key: dict[str, str], tensors: list[str], bins: int, sample: int | None
) -> tuple[dict[str, TensorStats], int] | None:
    """The statistics in ``folder/calib_stats.npz`` for ``tensors`` when they were collected under ``key``."""
    path = folder / STATS_FILE
    if not path.is_file():
        return None
    try:
        stats, old_key, samples, old_sample = load_stats(path)
    except UsageError:
        return None
    if old_key != key or old_sample != sample or any(t not in stats or stats[t].bins != bins for t in tensors):
        return None
    return {t: stats[t] for t in tensors}, samples
