"""Validation on Ray: the FP32 reference and the candidate run over shards of the validation set as Ray tasks.

Each task rebuilds the runner (an ONNX model on ONNX Runtime, or the PyTorch module) and returns
the logits (and labels) of its contiguous shard; shards start on batch boundaries, so every batch
is the single-process run's batch, each task runs with the runner's own intra-op thread count (float
reductions are ordered by it), and the logits are concatenated in order. Every metric is then
computed once on the driver from the same arrays: identical to the single-process report.

Latency is not sharded: one Ray task, alone (the shards have finished, and it asks for every CPU
of a node), times the baseline and the candidate; the report's ``scale`` section says on which
host and worker. Data travels as in :mod:`rescompile.calibrate.on_ray` (object store for
in-memory arrays, paths for image folders and ``.npy`` files: a file system every node sees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rescompile.config import RaySettings
from rescompile.scale.cluster import cluster_cpus, connect, node_cpus, node_label, shard_bounds
from rescompile.scale.tasks import TaskGroup
from rescompile.validate.latency import Latency, LatencyPlan, LatencySettings, measure_all

Recipe = tuple[str, Any, str, int, bool]  # (kind, model bytes or torch module, runner name, intra-op threads, Q/DQ fusion)


def recipe_of(runner: Any) -> Recipe | None:
    """How a Ray task rebuilds ``runner``; None for a runner that stays here (TensorRT on this GPU, a custom one)."""
    from rescompile.runtime.runners import OnnxRuntimeRunner, TorchRunner

    if isinstance(runner, OnnxRuntimeRunner) and getattr(runner, "model_data", None) is not None:
        return ("onnxruntime", runner.model_data, runner.name, runner.threads, runner.fuse_qdq)
    if isinstance(runner, TorchRunner):
        return ("torch", runner.module, runner.name, runner.threads, False)
    return None


def make_runner(recipe: Recipe) -> Any:
    """The runner again, in a Ray worker, with the driver's thread count."""
    from rescompile.runtime.runners import OnnxRuntimeRunner, TorchRunner

    kind, model, name, threads, fuse_qdq = recipe
    return OnnxRuntimeRunner(model, name, threads, fuse_qdq=fuse_qdq) if kind == "onnxruntime" else TorchRunner(model, name, threads)


def shard_outputs(
    recipe: Recipe, inputs: Any, start: int, stop: int, batch_size: int, keep_inputs: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Logits, labels and (when kept) inputs of samples ``start:stop`` (what one Ray task computes)."""
    logits, labels, kept = inputs.part(start, stop).outputs(make_runner(recipe), batch_size, keep_inputs=keep_inputs)
    return logits.astype(np.float32), labels, kept


def outputs_on_ray(
    runner: Any,
    inputs: Any,
    settings: RaySettings,
    batch_size: int,
    *,
    keep_inputs: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """``runner``'s logits (labels, inputs) over ``inputs``, sharded on Ray; None when it cannot run there.

    Raises:
        MissingDependency: Ray is not installed.
        UsageError: bad data in a shard (the usual one-line message).
        WorkerLost: a shard's worker or node was lost more often than ``settings.retries`` allows (exit 6).
    """
    recipe = recipe_of(runner)
    if recipe is None or getattr(inputs, "part", None) is None:
        return None
    ray = connect(settings)
    bounds = shard_bounds(inputs.count, settings.shards or cluster_cpus(ray), batch_size)
    recipe_ref, inputs_ref = ray.put(recipe), ray.put(inputs)
    # as many CPUs as the task has threads (no oversubscription), but never more than a node has
    tasks = TaskGroup(ray, shard_outputs, settings, num_cpus=min(recipe[3], node_cpus(ray)))  # retried on a lost worker or node
    refs = [
        tasks.submit(f"{recipe[2]} shard {k + 1} of {len(bounds)} (samples {a}:{b})", recipe_ref, inputs_ref, a, b, batch_size, keep_inputs)
        for k, (a, b) in enumerate(bounds)
    ]
    sizes = [b - a for a, b in bounds]
    parts = tasks.gather(refs, on_done=None if on_batch is None else (lambda i: on_batch(sizes[i])))
    logits = np.concatenate([p[0] for p in parts])
    labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    kept = None if not keep_inputs else np.concatenate([p[2] for p in parts])
    return logits, labels, kept


def _timed(
    candidate: Recipe, baseline: Recipe | None, sample: np.ndarray, latency: LatencySettings, other_s: float
) -> tuple[list[Latency], dict[str, float], LatencyPlan, dict[str, str]]:
    import ray

    cand = make_runner(candidate)
    base = None if baseline is None else make_runner(baseline)
    records, speedup, plan = measure_all(cand, base, sample, latency, other_s=other_s)
    return records, speedup, plan, node_label(ray)


def latency_on_ray(
    candidate: Any, baseline: Any, sample: np.ndarray, latency: LatencySettings, ray_settings: RaySettings, other_s: float = 0.0
) -> tuple[list[Latency], dict[str, float], LatencyPlan, dict[str, str]] | None:
    """:func:`rescompile.validate.latency.measure_all` in one Ray task that holds every CPU of a node (so it runs alone).

    Returns ``(records, speedup, latency plan, where)``; None when a runner cannot run on Ray (then time it here).
    """
    cand = recipe_of(candidate)
    base = None if baseline is None else recipe_of(baseline)
    if cand is None or (baseline is not None and base is None):
        return None
    ray = connect(ray_settings)
    tasks = TaskGroup(ray, _timed, ray_settings, num_cpus=node_cpus(ray))  # a retry times again, on whichever node is left
    records, speedup, plan, where = tasks.gather([tasks.submit(f"latency of {cand[2]}", cand, base, sample, latency, other_s)])[0]
    return records, speedup, plan, where
