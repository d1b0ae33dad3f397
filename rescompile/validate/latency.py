"""Latency after warm-up: percentiles and throughput per batch size."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rescompile.runtime.runners import Runner


@dataclass
class Latency:
    runner: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second at p50


def measure_latency(
    runner: Runner,
    sample: np.ndarray,
    batch: int,
    *,
    warmup: int = 5,
    runs: int = 30,
    budget_s: float | None = None,
    on_run: Callable[[], None] | None = None,
) -> Latency:
    """Time ``runner.infer`` on a batch built from ``sample`` (tiled to ``batch``).

    Runs ``runs`` timed calls after ``warmup``, or stops early once ``budget_s`` is spent
    (at least 3 timed calls).
    """
    reps = int(np.ceil(batch / len(sample)))
    x = np.ascontiguousarray(np.concatenate([sample] * reps)[:batch])
    for _ in range(warmup):
        runner.infer(x)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.infer(x)
        times.append((time.perf_counter() - t0) * 1000.0)
        if on_run is not None:
            on_run()
        if budget_s is not None and len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    arr = np.asarray(times)
    p50 = float(np.percentile(arr, 50))
    return Latency(runner.name, batch, len(arr), p50, float(np.percentile(arr, 90)), float(np.percentile(arr, 99)),
                   float(arr.mean()), batch / (p50 / 1000.0))  # fmt: skip
