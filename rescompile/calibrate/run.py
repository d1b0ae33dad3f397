"""The calibrate stage as one function: reuse a valid cache, or collect statistics once, then ranges by method."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from rescompile.calibrate.cache import (
    RANGES_FILE,
    STATS_FILE,
    calibration_key,
    reuse_ranges,
    reuse_stats,
    stats_to_bytes,
)  # fmt: skip
from rescompile.calibrate.collect import DEFAULT_BINS, DEFAULT_MEMORY_BUDGET, DEFAULT_SAMPLE, TensorStats, collect_stats
from rescompile.calibrate.ranges import DEFAULT_PERCENTILE, CalibrationResult, calibration_result, check_method
from rescompile.data.preprocess import Preprocess
from rescompile.data.sources import DataSource

log = logging.getLogger("rescompile.calibrate")


@dataclass
class CalibrationRun:
    """What the calibrate stage produced and how: ``reused`` is None, ``"ranges"`` or ``"statistics"``."""

    result: CalibrationResult
    ranges_json: str
    stats_npz: bytes
    reused: str | None
    seconds: float
    stats: dict[str, TensorStats] | None = None


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    source: DataSource,
    pre: Preprocess,
    *,
    method: str = "max",
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = 64,
    bins: int = DEFAULT_BINS,
    threads: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    sample: int | None = DEFAULT_SAMPLE,
    previous: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    ray: Any = None,
) -> CalibrationRun:
    """Calibrate ``tensors`` of ``model`` on ``source``.

    Args:
        model: the FP32 simplified model.
        tensors: the tensors to calibrate (``QuantPlan.calibrated_tensors``).
        source, pre: the calibration data and its preprocessing.
        method: max | percentile | entropy | mse | auto.
        percentile: for ``percentile`` (and ``auto``'s percentile candidate).
        sample: histogram values per tensor per image (see :func:`collect_stats`); part of the cache key.
        previous: a folder holding an earlier ranges.json / calib_stats.npz to reuse when their key matches.
        on_batch: progress callback (never called when a cache is reused).
        ray: a :class:`rescompile.scale.cluster.RaySettings`: collect the statistics on Ray, one task per
            shard, merged exactly (the same ranges as without it).

    Raises:
        UsageError: an unknown method, bad data, NaN/Inf in an activation.
    """
    check_method(method, percentile)
    t0 = time.perf_counter()
    model_bytes = model.SerializeToString(deterministic=True)
    key = calibration_key(model_bytes, source.fingerprint(), pre.to_dict())
    params = {"percentile": percentile, "bins": bins, "levels": 128, "sample": sample}
    if previous is not None:
        text = reuse_ranges(previous, key, tensors, method, params)
        if text is not None and (previous / STATS_FILE).is_file():
            log.info("reusing calibration ranges from %s (same model, data and preprocessing)", previous / RANGES_FILE)
            return CalibrationRun(CalibrationResult.from_json(text), text, (previous / STATS_FILE).read_bytes(),
                                  "ranges", time.perf_counter() - t0)  # fmt: skip
        found = reuse_stats(previous, key, tensors, bins, sample)
        if found is not None:
            stats, samples = found
            log.info("reusing calibration statistics from %s: ranges by %s without running the model",
                     previous / STATS_FILE, method)  # fmt: skip
            result = calibration_result(stats, method, samples, percentile=percentile, key=key,
                                        preprocess=pre.to_dict(), sample=sample)  # fmt: skip
            return CalibrationRun(result, result.to_json(), stats_to_bytes(stats, key, samples, sample), "statistics",
                                  time.perf_counter() - t0, stats)  # fmt: skip
    if ray is not None:
        from rescompile.scale.ray_calibrate import collect_on_ray

        stats = collect_on_ray(model, tensors, source, pre, ray, batch_size=batch_size, bins=bins, memory_budget=memory_budget,
                               sample=sample, model_bytes=model_bytes, on_batch=on_batch)  # fmt: skip
    else:
        stats = collect_stats(model, tensors, (x for x, _ in source.batches(pre, batch_size)), bins=bins,
                              on_batch=on_batch, threads=threads, memory_budget=memory_budget, sample=sample,
                              model_bytes=model_bytes)  # fmt: skip
    result = calibration_result(stats, method, source.count, percentile=percentile, key=key, preprocess=pre.to_dict(),
                                sample=sample)  # fmt: skip
    return CalibrationRun(result, result.to_json(), stats_to_bytes(stats, key, source.count, sample), None,
                          time.perf_counter() - t0, stats)  # fmt: skip
