"""Calibration statistics on Ray: one task per shard of the calibration set, merged exactly.

Each task runs :func:`rescompile.calibrate.collect.collect_stats` over its contiguous shard
(``start`` fixes the sampled histogram values by image index) and returns the statistics;
:func:`rescompile.calibrate.merge.merge_stats` adds them up. The ranges are those of one
process over the whole set, bit for bit, for every method.

Data: the :class:`DataSource` goes to Ray's object store once. In-memory arrays (``.npz``,
the demo sets) travel inside it; image folders and ``.npy`` files travel as paths, which
every node must be able to read (a shared file system).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from rescompile.calibrate.collect import CollectSettings, InputWatch, TensorStats, collect_stats
from rescompile.calibrate.merge import merge_stats, merge_tensor
from rescompile.config import RaySettings
from rescompile.data.preprocess import Preprocess
from rescompile.data.sources import DataSource, take
from rescompile.scale.cluster import cluster_cpus, connect, shard_bounds
from rescompile.scale.tasks import TaskGroup


def collect_shard(
    model_bytes: bytes, tensors: list[str], source: DataSource, pre: Preprocess, start: int, stop: int, settings: CollectSettings
) -> tuple[dict[str, TensorStats], TensorStats]:
    """Statistics of images ``start:stop`` of ``source``, and the min/max/count of the inputs (for the data checks of
    :mod:`rescompile.calibrate.checks`): what one Ray task computes; callable without Ray."""
    shard = take(source, np.arange(start, stop), source.name)
    model = onnx.load_from_string(model_bytes)
    watch = InputWatch()
    batches = watch.watch(x for x, _ in shard.batches(pre, settings.batch_size))
    stats = collect_stats(model, tensors, batches, settings, model_bytes=model_bytes, start=start)
    return stats, watch.stats


def collect_on_ray(
    model: onnx.ModelProto,
    tensors: list[str],
    source: DataSource,
    pre: Preprocess,
    settings: RaySettings,
    collect: CollectSettings | None = None,
    *,
    model_bytes: bytes | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, TensorStats], TensorStats]:
    """The statistics of ``collect_stats`` over ``source``, collected by Ray tasks, one per shard, and the
    min/max/count of the inputs (as the single-process run's input watch sees them). Each task runs ``collect`` with
    ``settings.threads`` intra-op threads.

    Raises:
        MissingDependency: Ray is not installed.
        UsageError: bad data in any shard (the first failing shard's message), or an unreachable cluster.
        WorkerLost: a shard's worker or node was lost more often than ``settings.retries`` allows (exit 6).
    """
    collect = collect or CollectSettings()
    ray = connect(settings)
    bounds = shard_bounds(source.count, settings.shards or cluster_cpus(ray), collect.batch_size)
    per_task = replace(collect, threads=settings.threads)
    model_ref = ray.put(model_bytes or model.SerializeToString(deterministic=True))
    source_ref = ray.put(source)
    tasks = TaskGroup(ray, collect_shard, settings, num_cpus=1)  # retried on a lost worker or node: a shard is a pure function
    refs = [
        tasks.submit(
            f"calibration shard {k + 1} of {len(bounds)} (samples {a}:{b})",
            *(model_ref, list(tensors), source_ref, pre, a, b, per_task),
        )
        for k, (a, b) in enumerate(bounds)
    ]
    sizes = [b - a for a, b in bounds]
    parts: list[Any] = tasks.gather(refs, on_done=None if on_batch is None else (lambda i: on_batch(sizes[i])))
    return merge_stats([p[0] for p in parts]), merge_tensor([p[1] for p in parts])
