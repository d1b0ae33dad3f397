"""Latency after warm-up: percentiles, throughput, peak RSS; timed within a budget unless told otherwise.

Three modes (:attr:`LatencySettings.mode`):

- ``auto`` (the default): the whole latency measurement gets a quarter of the time the rest of the
  build or validation took (so it is at most a fifth of the total), clamped to [1 s, 60 s]. Each
  batch size and runner gets an equal share (warm-up included) and is timed until its share is
  spent (3 to 30 runs). Batch sizes after the smallest are skipped, and the report says so, when
  three runs of them are estimated not to fit in what is left. ``brief`` (a graph whose latency
  on this runtime is not representative, e.g. signed INT8 activations on ONNX Runtime's CPU
  provider): the smallest batch size only, one warm-up and 3 timed runs.
- ``runs`` (``--latency-runs N``): exactly N timed runs after ``warmup`` calls, every batch size.
- ``budget`` (``--latency-budget S``): S seconds per batch size and runner, warm-up included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rescompile.config import MIN_RUNS as MIN_RUNS
from rescompile.config import LatencySettings as LatencySettings  # with every user choice
from rescompile.progress import progress
from rescompile.runtime.memory import peak_rss_mib, reset_peak_rss
from rescompile.runtime.runners import Runner

MAX_KEPT_SAMPLES = 2000  # per measurement, for the distribution plot; percentiles use every run
AUTO_FRACTION = 0.25  # auto: latency takes a quarter of the rest of the work, i.e. at most a fifth of the total
MIN_BUDGET_S = 1.0
MAX_BUDGET_S = 60.0
MAX_RUNS = 30


def auto_budget(other_s: float) -> float:
    """The whole latency budget in ``auto`` mode: a quarter of ``other_s`` (the rest of the work), clamped."""
    return float(min(MAX_BUDGET_S, max(MIN_BUDGET_S, AUTO_FRACTION * max(other_s, 0.0))))


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
    cuda_graph: dict[str, Any] | None = None  # TensorRT runners: whether launches replayed a CUDA graph, and why not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SkippedBatch:
    batch: int
    reason: str


@dataclass
class LatencyPlan:
    """How latency was timed: the mode, the budget (auto), seconds spent, ``brief``, the batch sizes skipped and why."""

    mode: str = "runs"
    budget_s: float | None = None
    spent_s: float = 0.0
    brief: bool = False
    skipped: list[SkippedBatch] = field(default_factory=list)

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
    max_runs: int | None = None,
    on_run: Callable[[], None] | None = None,
) -> Latency:
    """Time ``runner.infer`` on a batch built from ``sample`` (tiled to ``batch``).

    Args:
        warmup: untimed calls first (allocations, lazy initialization, caches); with ``budget_s``
            the warm-up stops after its first call once a quarter of the budget is spent.
        runs: timed calls, unless ``budget_s`` is given: then calls continue until the budget,
            warm-up included, is spent (at least 3 timed calls, at most ``max_runs``).
        on_run: called after each timed call (progress display).
    """
    x = tile_batch(sample, batch)
    reset_peak_rss()
    start = time.perf_counter()
    warmed = 0
    while warmed < warmup and not (warmed and budget_s is not None and time.perf_counter() - start >= budget_s / 4):
        runner.infer(x)
        warmed += 1
    graphs = getattr(runner, "enable_graph", None)
    if graphs is not None:  # TensorRT: capture after warm-up (one call that captures, untimed)
        graphs()
        runner.infer(x)
    times: list[float] = []
    while True:
        t0 = time.perf_counter()
        runner.infer(x)
        times.append((time.perf_counter() - t0) * 1000.0)
        if on_run is not None:
            on_run()
        if budget_s is None:
            if len(times) >= runs:
                break
        elif len(times) >= MIN_RUNS and (time.perf_counter() - start >= budget_s or len(times) >= (max_runs or 1 << 62)):
            break
    graph_info = None
    if graphs is not None:
        graph_info = getattr(runner, "graph_info", None)
        runner.drop_graph()  # type: ignore[attr-defined]  # later calls (accuracy) enqueue plainly
    arr = np.asarray(times)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return Latency(
        runner.name,
        role,
        batch,
        len(arr),
        warmed,
        p50,
        p90,
        p99,
        float(arr.mean()),
        float(arr.min()),
        float(arr.max()),
        batch / (p50 / 1000.0),
        peak_rss_mib(),
        [round(t, 4) for t in times[:MAX_KEPT_SAMPLES]],
        graph_info,
    )


def measure_runners(
    runners: list[tuple[Runner, str]],
    sample: np.ndarray,
    settings: LatencySettings,
    *,
    other_s: float = 0.0,
    on_run: Callable[[], None] | None = None,
) -> tuple[list[Latency], LatencyPlan]:
    """Time every ``(runner, role)`` at each batch size by ``settings.mode``.

    Args:
        other_s: seconds the rest of the build or validation took (``auto`` takes a quarter of it).
        on_run: called after each measurement (progress display).

    Returns:
        The measurements and the plan the report records: mode, budget, seconds spent,
        ``brief``, and the batch sizes skipped with the reason.
    """
    settings.check()
    mode, brief = settings.mode, settings.brief and settings.mode == "auto"
    batches = sorted(set(settings.batches))
    if brief:
        batches = sorted({batches[0], *(b for b in settings.required if b in batches)})
    budget = auto_budget(other_s) if mode == "auto" else None
    start = time.perf_counter()
    records: list[Latency] = []
    skipped: list[SkippedBatch] = []
    per_sample: dict[str, float] = {}  # seconds per sample of each role at the last batch size
    for i, batch in enumerate(batches):
        if budget is not None and not brief and i and batch not in settings.required:
            left = budget - (time.perf_counter() - start)
            need = (1 + MIN_RUNS) * batch * sum(per_sample.values())  # one warm-up and MIN_RUNS runs, every runner
            if need > left:
                reason = f"{MIN_RUNS} runs estimated at {need:.1f} s; {max(left, 0):.1f} s of the {budget:.1f} s latency budget left"
                skipped.append(SkippedBatch(batch, reason))
                continue
        for j, (runner, role) in enumerate(runners):
            if mode == "runs":
                r = measure_latency(runner, sample, batch, role=role, warmup=settings.warmup, runs=settings.runs or MIN_RUNS)
            elif mode == "budget":
                r = measure_latency(runner, sample, batch, role=role, warmup=settings.warmup, budget_s=settings.budget_s)
            elif brief:
                r = measure_latency(runner, sample, batch, role=role, warmup=min(settings.warmup, 1), runs=MIN_RUNS)
            else:
                left = (budget or MIN_BUDGET_S) - (time.perf_counter() - start)
                remaining = (len(batches) - i) * len(runners) - j  # measurements still to make, this one included
                r = measure_latency(
                    runner, sample, batch, role=role, warmup=settings.warmup, budget_s=max(left / remaining, 1e-3), max_runs=MAX_RUNS
                )
            per_sample[role] = r.p50_ms / 1000.0 / batch
            records.append(r)
            if on_run is not None:
                on_run()
    plan = LatencyPlan(mode, None if budget is None else round(budget, 3), round(time.perf_counter() - start, 3), brief, skipped)
    return records, plan


def measure_all(
    candidate: Runner,
    baseline: Runner | None,
    sample: np.ndarray,
    settings: LatencySettings,
    *,
    other_s: float = 0.0,
    show_progress: bool = False,
) -> tuple[list[Latency], dict[str, float], LatencyPlan]:
    """Latency of the baseline and the candidate at each batch size (:func:`measure_runners`);
    speedup = baseline p50 / candidate p50; and the latency plan (mode, budget, skipped batch sizes)."""
    runners = [(baseline, "baseline")] if baseline is not None else []
    runners.append((candidate, "candidate"))
    with progress("latency", len(settings.batches) * len(runners), show_progress) as advance:
        measured, plan = measure_runners(runners, sample, settings, other_s=other_s, on_run=lambda: advance(1))
    speedup = {}
    if baseline is not None:
        for batch in sorted({r.batch for r in measured}):
            b = next(r for r in measured if r.batch == batch and r.role == "baseline")
            c = next(r for r in measured if r.batch == batch and r.role == "candidate")
            speedup[str(batch)] = b.p50_ms / c.p50_ms
    return measured, speedup, plan
