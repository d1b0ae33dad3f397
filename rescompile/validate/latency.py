"""Latency after warm-up: a fixed number of timed runs or a time budget; percentiles, throughput, peak RSS."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rescompile.errors import UsageError
from rescompile.runtime.memory import peak_rss_mib, reset_peak_rss
from rescompile.runtime.runners import Runner

MAX_KEPT_SAMPLES = 2000  # per measurement, for the distribution plot; percentiles use every run


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: ``warmup`` untimed calls, then ``runs`` timed calls or ``budget_s`` seconds."""

    batches: tuple[int, ...] = (1, 32)
    warmup: int = 5
    runs: int = 30
    budget_s: float | None = None  # when set: time until the budget is spent (at least 3 runs), ignore ``runs``

    def check(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"latency batch sizes must be >= 1, got {list(self.batches)}")
        if self.warmup < 0:
            raise UsageError(f"warm-up runs must be >= 0, got {self.warmup}")
        if self.runs < 3:
            raise UsageError(f"timed runs must be >= 3, got {self.runs}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise UsageError(f"the latency time budget must be > 0 seconds, got {self.budget_s}")


@dataclass
class Latency:
    runner: str
    role: str  # "candidate" or "baseline"
    batch: int
    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second at p50
    peak_rss_mib: float  # peak resident memory of the process during these runs
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tile_batch(sample: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` samples built by repeating ``sample`` (N >= 1) along the batch axis."""
    reps = int(np.ceil(batch / len(sample)))
    return np.ascontiguousarray(np.concatenate([sample] * reps)[:batch])


def measure_latency(
    runner: Runner,
    sample: np.ndarray,
    batch: int,
    *,
    role: str = "candidate",
    warmup: int = 5,
    runs: int = 30,
    budget_s: float | None = None,
    on_run: Callable[[], None] | None = None,
) -> Latency:
    """Time ``runner.infer`` on a batch built from ``sample`` (tiled to ``batch``).

    Args:
        warmup: untimed calls first (allocations, lazy initialization, caches).
        runs: timed calls, unless ``budget_s`` is given: then calls continue until the budget
            is spent (at least 3).
        on_run: called after each timed call (progress display).
    """
    x = tile_batch(sample, batch)
    reset_peak_rss()
    for _ in range(warmup):
        runner.infer(x)
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.infer(x)
        times.append((time.perf_counter() - t0) * 1000.0)
        if on_run is not None:
            on_run()
        if budget_s is None:
            if len(times) >= runs:
                break
        elif len(times) >= 3 and time.perf_counter() - start >= budget_s:
            break
    arr = np.asarray(times)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return Latency(
        runner.name, role, batch, len(arr), warmup, p50, p90, p99, float(arr.mean()), float(arr.min()),
        float(arr.max()), batch / (p50 / 1000.0), peak_rss_mib(), [round(t, 4) for t in times[:MAX_KEPT_SAMPLES]],
    )  # fmt: skip
