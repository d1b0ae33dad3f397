"""Connecting to Ray (the optional extra ``[ray]``): a local Ray started in-process, or a cluster by address.

Ray is imported lazily through :func:`rescompile.errors.require`, so everything else works without it
(``MissingDependency``, exit 3, names the extra to install). Shards are planned here as pure functions.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rescompile.config import RaySettings
from rescompile.errors import UsageError, require

log = logging.getLogger("rescompile.scale")


def connect(settings: RaySettings) -> Any:
    """The ``ray`` module, initialized: the running Ray if any, else a local one or the cluster at ``address``.

    Raises:
        MissingDependency: Ray is not installed (exit 3).
        UsageError: the cluster at ``address`` cannot be reached.
    """
    ray = require("ray", extra="ray")
    if ray.is_initialized():
        return ray
    try:
        if settings.address:
            ray.init(address=settings.address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=settings.num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise UsageError(
            f"cannot connect to {settings.where()}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint="start one with `ray start --head` and pass the address it prints",
        ) from None
    log.info("connected to %s: %s CPUs", settings.where(), ray.cluster_resources().get("CPU", 0))
    return ray


def cluster_cpus(ray: Any) -> int:
    """CPUs in the cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def node_cpus(ray: Any) -> int:
    """CPUs of the cluster's largest live node (at least 1): the most one task can ask for."""
    return max(1, int(max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)))


def shard_bounds(count: int, shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``range(count)`` into at most ``shards`` contiguous ``(start, stop)`` pieces of near-equal size.

    Every boundary is a multiple of ``align`` (the batch size), so each shard's batches are the
    single-process run's batches: per-sample outputs do not depend on where the data was cut.

    Raises:
        UsageError: ``shards`` or ``align`` below 1.
    """
    if shards < 1 or align < 1:
        raise UsageError(f"shards and batch size must be at least 1 (got {shards}, {align})")
    blocks = -(-count // align)  # batches
    n = max(1, min(shards, blocks))
    bounds = []
    for k in range(n):
        lo, hi = blocks * k // n, blocks * (k + 1) // n
        if hi > lo:
            bounds.append((lo * align, min(hi * align, count)))
    return bounds or [(0, 0)]


def node_label(ray: Any) -> dict[str, str]:
    """Where the calling Ray task runs: ``{"host", "node_ip", "node_id", "worker_pid"}``."""
    import socket

    ctx = ray.get_runtime_context()
    return {
        "host": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ctx.get_node_id(),
        "worker_pid": str(os.getpid()),
    }
