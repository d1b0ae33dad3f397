"""Running library functions as Ray tasks: retried when a worker or node is lost, errors come back as values.

A :class:`RescompileError` raised in a task (bad data in a shard, say) reaches the user as the
same one-line message and exit code as without Ray, not as a remote traceback; it is a value
for Ray, so it is never retried (bad input stays bad).

Lost workers and nodes are Ray's own business: every task is submitted with ``max_retries``
(``RaySettings.retries``, default 3) and ``retry_exceptions=False``, so Ray runs it
again when its worker process dies (killed, out of memory) or its node is lost (a raylet gone,
a preempted machine), and never for an exception of the task's own. A shard is a pure function
of its inputs, so a retried one returns the same bytes and the merged result is that of one
process. Ray does not tell a task which attempt it is; each task therefore reports its start
(where it runs) to one small actor of this driver (:class:`AttemptLog`, no CPU, on the driver's
node), which is how the report's ``scale.retries`` knows which tasks ran more than once and where.
When the retries run out, :class:`TaskGroup` raises :class:`~rescompile.errors.WorkerLost`
(exit 6) naming the shard, the node its last attempt ran on and Ray's cause.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from rescompile.errors import RescompileError, WorkerLost, environment_fault


def task_result(fn: Callable[..., Any]) -> Callable[..., tuple[str, Any]]:
    """``fn`` returning ``("ok", value)``, or ``("error", (class name, exit code, message, hint))`` for a RescompileError."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> tuple[str, Any]:
        try:
            return "ok", fn(*args, **kwargs)
        except RescompileError as exc:
            return "error", (type(exc).__name__, exc.exit_code, exc.message, exc.hint)

    return run


def unwrap(result: tuple[str, Any]) -> Any:
    """The value of a :func:`task_result`, or its error raised again as the same kind of RescompileError."""
    status, value = result
    if status == "ok":
        return value
    from rescompile import errors

    name, code, message, hint = value
    found = getattr(errors, name, None)
    cls: type[RescompileError] = found if isinstance(found, type) and issubclass(found, RescompileError) else RescompileError
    exc = RescompileError.__new__(cls)
    RescompileError.__init__(exc, message, hint=hint)
    exc.exit_code = code
    raise exc


class AttemptLog:
    """Where each attempt of each task started (an actor of the driver): ``start`` returns the attempt number."""

    def __init__(self) -> None:
        self.starts: dict[str, list[dict[str, str]]] = {}

    def start(self, key: str, where: dict[str, str]) -> int:
        self.starts.setdefault(key, []).append(where)
        return len(self.starts[key])

    def attempts(self, keys: list[str]) -> dict[str, list[dict[str, str]]]:
        return {k: self.starts.get(k, []) for k in keys}


_LOGS: dict[tuple[str, str, str], Any] = {}  # (GCS address, driver's node, job id) -> the AttemptLog actor of this driver


def _attempt_log(ray: Any) -> Any:
    """This driver's AttemptLog actor (one per Ray job); None where one cannot be made (then no attempt is recorded)."""
    try:
        ctx = ray.get_runtime_context()
        # job ids start again at 1 in every new cluster: the key names the cluster and the driver's node as well
        key = (str(ctx.gcs_address), str(ctx.get_node_id()), str(ctx.get_job_id()))
        if key not in _LOGS:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(ctx.get_node_id(), soft=True)  # lives and dies with the driver
            _LOGS.clear()
            _LOGS[key] = ray.remote(AttemptLog).options(num_cpus=0, max_restarts=0, scheduling_strategy=here).remote()
        return _LOGS[key]
    except Exception:  # noqa: BLE001 - e.g. a Ray client connection without a node of its own: retries still work, unrecorded
        return None


def _attempted(fn: Callable[..., Any]) -> Callable[..., tuple[str, Any]]:
    """``task_result(fn)`` that first tells the attempt log where this attempt runs (best effort: never fails the task)."""
    inner = task_result(fn)

    def run(log: Any, key: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        import ray

        from rescompile.scale.cluster import node_label

        try:
            if log is not None:
                ray.get(log.start.remote(key, node_label(ray)), timeout=60)
        except Exception:  # noqa: BLE001, S110 - the log is a record, not part of the result
            pass
        return inner(*args, **kwargs)

    # fn's name (Ray names the task and its worker process after it: ray::collect_shard), not its signature
    # (functools.wraps would make Ray check the arguments against fn's, which lacks log and key)
    run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return run


def _where(attempt: dict[str, str]) -> str:
    node = attempt.get("node_id", "")[:12]
    return f"{attempt.get('node_ip') or attempt.get('host') or '?'} (node {node}, worker pid {attempt.get('worker_pid', '?')})"


class TaskGroup:
    """Tasks of one step (the shards of a calibration, say) running ``fn`` on Ray with bounded retries.

    Args:
        ray: the connected ``ray`` module (:func:`rescompile.scale.cluster.connect`).
        fn: a function of plain arguments (a pure function of them: a retry gives the same result).
        settings: the :class:`~rescompile.config.RaySettings`: ``retries`` is Ray's ``max_retries`` (attempts
            after the first when the worker or node is lost); retried tasks are added to its ``retried`` record.
        num_cpus: CPUs each task asks for.
    """

    def __init__(self, ray: Any, fn: Callable[..., Any], settings: Any, *, num_cpus: float = 1) -> None:
        self.ray = ray
        self.retries = int(settings.retries)
        self.record_to: list[dict[str, Any]] | None = settings.retried
        self.log = _attempt_log(ray)
        self.remote = ray.remote(_attempted(fn)).options(num_cpus=num_cpus, max_retries=self.retries, retry_exceptions=False)
        self.group = uuid.uuid4().hex
        self.labels: dict[Any, str] = {}
        self.keys: dict[Any, str] = {}

    def submit(self, label: str, *args: Any) -> Any:
        """Start one task, ``fn(*args)``; ``label`` names it in messages ("calibration shard 2 of 4 (samples 128:256)")."""
        key = f"{self.group}/{len(self.keys)}"
        ref = self.remote.remote(self.log, key, *args)
        self.labels[ref], self.keys[ref] = label, key
        return ref

    def result(self, ref: Any) -> Any:
        """The value of a finished task.

        Raises:
            RescompileError: the task's own (bad input in the shard: the usual message and exit code).
            EnvironmentFault: the task hit a full or failing disk (exit 5).
            WorkerLost: Ray lost its worker or node more often than ``retries`` allows (exit 6).
        """
        ray = self.ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # an exception of the task itself, not retried: a bug, or the machine
            cause = getattr(exc, "cause", None) or exc
            fault = environment_fault(cause)
            if fault is not None:
                raise fault from None
            raise cause from None
        except ray.exceptions.RayError as exc:
            attempts = self.attempts(ref)
            where = f"; its last attempt ran on {_where(attempts[-1])}" if attempts else ""
            text = " ".join(str(exc).split())
            raise WorkerLost(
                f"{self.labels[ref]} failed after {max(len(attempts), 1)} attempt(s){where}: {type(exc).__name__}: {text[:240]}",
                hint=f"Ray retried it {self.retries} time(s) (a worker or node lost: killed, out of memory, preempted); run it again",
            ) from None
        return unwrap(value)

    def attempts(self, ref: Any) -> list[dict[str, str]]:
        """Where each attempt of the task ``ref`` started (empty when the log cannot be read)."""
        try:
            return list(self.ray.get(self.log.attempts.remote([self.keys[ref]]), timeout=60)[self.keys[ref]]) if self.log else []
        except Exception:  # noqa: BLE001 - a record, best effort
            return []

    def gather(self, refs: list[Any], on_done: Callable[[int], None] | None = None) -> list[Any]:
        """The values of ``refs`` in order (as they finish, ``on_done(index)``); the first error is raised."""
        index = {ref: i for i, ref in enumerate(refs)}
        out: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref]
                    out[i] = self.result(ref)
                    if on_done is not None:
                        on_done(i)
        finally:
            self.record(refs)
        return out

    def retried(self, refs: list[Any]) -> list[dict[str, Any]]:
        """``{"task", "attempts", "nodes"}`` of every task of ``refs`` that started more than once."""
        try:
            starts = self.ray.get(self.log.attempts.remote([self.keys[r] for r in refs]), timeout=60) if self.log else {}
        except Exception:  # noqa: BLE001 - a record, best effort
            return []
        found = []
        for ref in refs:
            attempts = starts.get(self.keys[ref], [])
            if len(attempts) > 1:
                found.append({"task": self.labels[ref], "attempts": len(attempts), "nodes": [_where(a) for a in attempts]})
        return found

    def record(self, refs: list[Any]) -> None:
        """Add the retried tasks of ``refs`` to the settings' record (``RaySettings.retried``: the report's ``scale.retries``)."""
        if self.record_to is not None:
            self.record_to.extend(self.retried(refs))
