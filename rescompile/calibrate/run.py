"""The calibrate stage as one function: reuse a valid cache, or collect statistics once, then ranges by method."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rescompile.calibrate.cache import (
    RANGES_FILE,
    STATS_FILE,
    calibration_key,
    load_stats,
    reuse_ranges,
    reuse_stats,
    stats_to_bytes,
)
from rescompile.calibrate.checks import CalibrationWarning, InputRange, check_inputs, check_ranges, check_samples
from rescompile.calibrate.collect import CollectSettings, InputWatch, TensorStats, collect_stats
from rescompile.calibrate.ranges import DEFAULT_PERCENTILE, ENTROPY_VERSION, CalibrationResult, calibration_result, check_method
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
    warnings: list[CalibrationWarning] = field(default_factory=list)  # see rescompile.calibrate.checks


def input_stats(model: onnx.ModelProto, stats: dict[str, TensorStats]) -> TensorStats | None:
    """The statistics of ``model``'s input among ``stats``, if it was calibrated."""
    inits = {t.name for t in model.graph.initializer}
    name = next((i.name for i in model.graph.input if i.name not in inits), None)
    return stats.get(name) if name is not None else None


def checked(run: CalibrationRun, source: DataSource, pre: Preprocess, inputs: TensorStats | None) -> CalibrationRun:
    """``run`` with the findings of :mod:`rescompile.calibrate.checks` in ``run.warnings`` (not logged: the caller shows them).

    Raises:
        UsageError: constant inputs, non-finite or absurd inputs or ranges.
    """
    float_data = source.arrays is not None and np.dtype(source.arrays.dtype) != np.uint8
    found: list[CalibrationWarning] = []
    if inputs is not None and inputs.count:
        found += check_inputs(InputRange.from_stats(inputs, float_data), pre, source.name)
    found += check_ranges(run.stats or {}, run.result.ranges)
    found += check_samples(run.result.samples, source.name)
    run.warnings = found  # shown once, by the caller: the build's summary and report, the calibrate command's output
    return run


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    source: DataSource,
    pre: Preprocess,
    *,
    method: str = "max",
    percentile: float = DEFAULT_PERCENTILE,
    collect: CollectSettings | None = None,
    previous: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    ray: Any = None,
    model_bytes: bytes | None = None,
) -> CalibrationRun:
    """Calibrate ``tensors`` of ``model`` on ``source``.

    Args:
        model: the FP32 simplified model.
        tensors: the tensors to calibrate (``QuantPlan.calibrated_tensors``).
        source, pre: the calibration data and its preprocessing.
        method: max | percentile | entropy | mse | auto.
        percentile: for ``percentile`` (and ``auto``'s percentile candidate).
        collect: batch size, bins, threads, memory budget, sampling (:class:`CollectSettings`); ``bins`` and
            ``sample`` are part of the cache key.
        previous: a folder holding an earlier ranges.json / calib_stats.npz to reuse when their key matches.
        on_batch: progress callback (never called when a cache is reused).
        ray: a :class:`rescompile.config.RaySettings`: collect the statistics on Ray, one task per
            shard, merged exactly (the same ranges as without it).
        model_bytes: ``model.SerializeToString(deterministic=True)``, when the caller has it (a 100 MB model
            takes 0.3 s to serialize).

    Raises:
        UsageError: an unknown method, bad data, NaN/Inf in an activation; constant, non-finite or absurd
            calibration inputs or ranges (:mod:`rescompile.calibrate.checks`; milder findings are
            ``CalibrationRun.warnings``).
    """
    check_method(method, percentile)
    collect = collect or CollectSettings()
    collect.check()
    bins, sample = collect.bins, collect.sample
    t0 = time.perf_counter()
    model_bytes = model_bytes if model_bytes is not None else model.SerializeToString(deterministic=True)
    key = calibration_key(model_bytes, source.fingerprint(), pre.to_dict())
    params = {"percentile": percentile, "bins": bins, "levels": 128, "sample": sample, "entropy": ENTROPY_VERSION}
    if previous is not None:
        text = reuse_ranges(previous, key, tensors, method, params)
        if text is not None and (previous / STATS_FILE).is_file():
            log.info("reusing calibration ranges from %s (same model, data and preprocessing)", previous / RANGES_FILE)
            old = {t: s for t, s in load_stats(previous / STATS_FILE)[0].items() if t in set(tensors)}
            run = CalibrationRun(
                CalibrationResult.from_json(text), text, (previous / STATS_FILE).read_bytes(), "ranges", time.perf_counter() - t0, old
            )
            return checked(run, source, pre, input_stats(model, old))
        found = reuse_stats(previous, key, tensors, bins, sample)
        if found is not None:
            stats, samples = found
            log.info("reusing calibration statistics from %s: ranges by %s without running the model", previous / STATS_FILE, method)
            result = calibration_result(stats, method, samples, percentile=percentile, key=key, preprocess=pre.to_dict(), sample=sample)
            run = CalibrationRun(
                result, result.to_json(), stats_to_bytes(stats, key, samples, sample), "statistics", time.perf_counter() - t0, stats
            )
            return checked(run, source, pre, input_stats(model, stats))
    watch = InputWatch()
    if ray is not None:
        from rescompile.calibrate.on_ray import collect_on_ray

        stats, seen = collect_on_ray(model, tensors, source, pre, ray, collect, model_bytes=model_bytes, on_batch=on_batch)
    else:
        batches = watch.watch(x for x, _ in source.batches(pre, collect.batch_size))
        stats = collect_stats(model, tensors, batches, collect, on_batch=on_batch, model_bytes=model_bytes)
        seen = watch.stats
    result = calibration_result(stats, method, source.count, percentile=percentile, key=key, preprocess=pre.to_dict(), sample=sample)
    run = CalibrationRun(result, result.to_json(), stats_to_bytes(stats, key, source.count, sample), None, time.perf_counter() - t0, stats)
    return checked(run, source, pre, seen)
