"""Connecting to Ray (the optional extra ``[ray]``): a local Ray started in-process, or a cluster by address.

Ray is imported lazily through :func:`rescompile.errors.require`, so everything else works without it
(``MissingDependency``, exit 3, names the extra to install). Shards are planned here as pure functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from rescompile.errors import UsageError, require

log = logging.getLogger("rescompile.scale")
DEFAULT_RETRIES = 3
RETRIES_ENV = "RESCOMPILE_RAY_RETRIES"


def default_retries() -> int:
    """Ray's ``max_retries`` for rescompile's tasks: ``RESCOMPILE_RAY_RETRIES`` when set (an integer >= 0), else 3.

    Raises:
        UsageError: the variable is not an integer >= 0.
    """
    text = os.environ.get(RETRIES_ENV, "").strip()
    if not text:
        return DEFAULT_RETRIES
    if not text.isdigit():
        raise UsageError(f"{RETRIES_ENV}={text!r} is not a number of retries", hint=f"an integer >= 0, e.g. {RETRIES_ENV}=3")
    return int(text)


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run on Ray.

    Attributes:
        address: an existing cluster (``ray://host:10001`` or ``host:6379``); None starts a local Ray in-process.
        shards: how many pieces to split the data into (default: one per CPU of the cluster).
        num_cpus: CPUs of a local Ray (default: all of this machine's).
        threads: intra-op threads of each task (default 1: one task per CPU).
        retries: Ray's ``max_retries`` of every task: attempts after the first when its worker or node is lost
            (never for an error of the task itself); a shard is a pure function, so a retry gives the same bytes.
            Default 3, or ``RESCOMPILE_RAY_RETRIES``.
        retried: filled as tasks run: ``{"task", "attempts", "nodes"}`` of each task that ran more than once
            (the report's ``scale.retries``).
    """

    address: str | None = None
    shards: int | None = None
    num_cpus: int | None = None
    threads: int = 1
    retries: int = field(default_factory=default_retries)
    retried: list[dict[str, Any]] = field(default_factory=list, compare=False, repr=False)

    def where(self) -> str:
        return f"Ray cluster at {self.address}" if self.address else "local Ray"


def ray_settings(use_ray: bool, address: str | None, shards: int | None = None) -> RaySettings | None:
    """The settings from the CLI's ``--ray`` / ``--ray-address`` / ``--shards`` (None: no Ray).

    Raises:
        UsageError: ``--shards`` without Ray, or an empty address.
    """
    if address is not None and not address.strip():
        raise UsageError("--ray-address is empty", hint="give the head's address, e.g. --ray-address 10.0.0.5:6379")
    if not use_ray and address is None:
        if shards is not None:
            raise UsageError("--shards needs --ray or --ray-address")
        return None
    if shards is not None and shards < 1:
        raise UsageError(f"--shards must be at least 1, not {shards}")
    return RaySettings(address=address, shards=shards)


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
    import os
    import socket

    ctx = ray.get_runtime_context()
    return {
        "host": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ctx.get_node_id(),
        "worker_pid": str(os.getpid()),
    }
