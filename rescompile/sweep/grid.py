"""``rescompile sweep``: a grid of builds, each a Ray task with its own folder; resumable; failures isolated.

A sweep file (YAML) holds ``base`` (:class:`BuildConfig`'s flat keys every build shares) and ``grid``
(fields each with a list of values; the sweep is their product), e.g.::

    out: sweeps/demo            # default: sweeps/<file name>
    base: {calib: demo-calib, val_size: 200, latency_runs: 5, latency_batches: [1]}
    grid:
      model: [demo]
      policy: [tensorrt, onnxruntime]
      calib_method: [max, entropy]
      keep_fp: [[], ["/stem/*"]]

Each build's key is the sha256 of its configuration (``BuildConfig.to_dict()`` without ``out``):
its folder is ``<out>/builds/<key[:12]>``, and a folder holding a finished result with the
same key is skipped on a rerun. A build that fails (bad input, a missed gate, a crash) is
recorded and the others go on; builds that raised an error are run again on the next
invocation, builds that missed a gate are finished (their result is deterministic).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.buildfolder import FAILED_SUFFIX
from rescompile.config import FLAT, OFF_UNLESS_ASKED, BuildConfig, Gates, RaySettings
from rescompile.errors import UsageError, WorkerLost
from rescompile.scale.cluster import connect
from rescompile.scale.tasks import TaskGroup

if TYPE_CHECKING:
    from rescompile.validate.results import Report

RESULT_FILE = "sweep_result.json"
SWEEP_SCHEMA = "rescompile.sweep/1"
_NOT_SWEPT = {"out", "progress"}  # where and how a build runs (Ray's keys are no flat keys: config.RAY_KEYS)
_TUPLES = {"keep_fp", "latency_batches", "mean", "std"}


@dataclass(frozen=True)
class SweepPoint:
    """One build of the grid: its swept values, its full config and its key."""

    params: dict[str, Any]
    config: BuildConfig
    key: str

    @property
    def folder_name(self) -> str:
        return self.key[:12]


@dataclass
class SweepSpec:
    out: Path
    points: list[SweepPoint]
    grid: dict[str, list[Any]] = field(default_factory=dict)


def _field_value(name: str, value: Any, where: str) -> Any:
    allowed = set(FLAT) - _NOT_SWEPT
    if name not in allowed:
        raise UsageError(
            f"{where}: unknown build setting {name!r}",
            hint="use the names of build options, e.g. model, policy, calib_method, keep_fp, target, backend, calib, val_size, gates",
        )
    if name == "gates":
        if not isinstance(value, dict):
            raise UsageError(f"{where}: gates must be a mapping, e.g. {{max_top1_drop: 1.0}}")
        try:
            return Gates(**value)
        except TypeError as exc:
            raise UsageError(f"{where}: bad gates: {exc}") from None
    if name in _TUPLES:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise UsageError(f"{where}: {name} must be a list, not {value!r}")
        return tuple(value)
    if name in ("weights", "recipe", "save_reference") and value is not None:
        return Path(value)
    if name in OFF_UNLESS_ASKED and not isinstance(value, bool):
        raise UsageError(f"{where}: {name} must be true or false, not {value!r}")
    return value


def config_key(cfg: BuildConfig) -> str:
    """sha256 of everything a build is made from (not where it is written, nor how it is run)."""
    doc = {k: v for k, v in cfg.to_dict().items() if k != "out"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def load_sweep(path: Path, out: Path | None = None) -> SweepSpec:
    """Parse a sweep file into its points (in grid order).

    Raises:
        UsageError: an unreadable file, unknown settings, an empty grid, or a value BuildConfig refuses.
    """
    import yaml

    from rescompile.readers import read_text

    text = read_text(path, "sweep file")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("grid", {}), dict) or not isinstance(doc.get("base", {}), dict):
        raise UsageError(f"{path}: a sweep is a mapping with 'grid' (settings -> lists of values) and optional 'base', 'out'")
    unknown = set(doc) - {"grid", "base", "out"}
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}", hint="a sweep file holds grid, base and out")
    base = {k: _field_value(k, v, f"{path} base") for k, v in (doc.get("base") or {}).items()}
    grid: dict[str, list[Any]] = {}
    for k, values in (doc.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{path}: grid.{k} must be a non-empty list of values")
        grid[k] = values
    overlap = set(base) & set(grid)
    if overlap:
        raise UsageError(f"{path}: {', '.join(sorted(overlap))} is both in base and in grid")
    folder = Path(out or doc.get("out") or Path("sweeps") / path.stem)
    points, seen = [], set()
    for combo in itertools.product(*grid.values()) if grid else [()]:
        params = dict(zip(grid, combo, strict=True))
        values = {**base, **{k: _field_value(k, v, f"{path} grid") for k, v in params.items()}}
        try:
            cfg = BuildConfig.from_flat(**values)
        except TypeError as exc:
            raise UsageError(f"{path}: {exc}") from None
        key = config_key(cfg)
        if key in seen:
            continue  # the same build twice in the grid (e.g. keep_fp [] and [] )
        seen.add(key)
        points.append(SweepPoint(params, cfg.replace(out=folder / "builds" / key[:12]), key))
    return SweepSpec(folder, points, grid)


def finished(point: SweepPoint) -> dict[str, Any] | None:
    """The recorded result of ``point`` when its folder holds one with the same key that need not run again."""
    path = Path(point.config.out or "") / RESULT_FILE
    if not path.is_file():
        path = Path(str(point.config.out) + FAILED_SUFFIX) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != point.key or doc.get("status") not in ("ok", "gate-failed"):
        return None
    return doc


def _metrics(report: Report) -> dict[str, Any]:
    """The numbers a sweep summary plots: top-1 (or agreement), p50 latency at the smallest batch, size."""
    m = report.measurement
    lat = sorted((r for r in m.latency if r.role == "candidate"), key=lambda r: r.batch)
    return {
        "top1": m.accuracy.candidate.top1,
        "top1_drop": m.accuracy.top1_drop,
        "agreement": m.agreement.top1,
        "cosine_mean": m.agreement.cosine_mean,
        "p50_ms": lat[0].p50_ms if lat else None,
        "latency_batch": lat[0].batch if lat else None,
    }


def run_point(point: SweepPoint) -> dict[str, Any]:
    """Build one point (in a Ray task or here) and record its result in its folder; never raises for a bad build."""
    from rescompile.errors import GateFailed, RescompileError
    from rescompile.io import write_json
    from rescompile.pipeline import BuildResult, build

    t0 = time.perf_counter()
    doc: dict[str, Any] = {"key": point.key, "params": point.params, "config": point.config.to_dict()}
    try:
        result = build(point.config)
        doc.update(status="ok", folder=str(result.out), **_metrics(result.typed))
    except RescompileError as exc:
        partial = exc.result if isinstance(exc, GateFailed) and isinstance(exc.result, BuildResult) else None
        doc.update(status="error", exit_code=exc.exit_code, error=exc.message, folder=str(point.config.out))
        if partial is not None:  # a build that missed a gate: published to <out>.failed, its numbers recorded
            doc.update(status="gate-failed", folder=str(partial.out), **_metrics(partial.typed))
    except Exception as exc:  # a crash in one build must not stop the sweep; an internal error (exit 4), or the machine's (5)
        from rescompile.errors import environment_fault

        fault = environment_fault(exc)
        if fault is not None:
            doc.update(status="error", exit_code=fault.exit_code, error=fault.message, folder=str(point.config.out))
        else:
            doc.update(status="error", exit_code=4, error=f"internal error: {type(exc).__name__}: {exc}", folder=str(point.config.out))
    doc["seconds"] = round(time.perf_counter() - t0, 2)
    if doc["status"] != "error" or Path(doc["folder"]).is_dir():
        folder = Path(doc["folder"])
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RESULT_FILE, doc)
    return doc


def _params(point: SweepPoint) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.params.items()) or point.key[:12]


def run_sweep(spec: SweepSpec, settings: RaySettings, *, cpus_per_build: int = 1, on_done: Any = None) -> list[dict[str, Any]]:
    """Run every point not finished yet as a Ray task; the results in grid order (finished ones marked ``skipped``).

    A point whose worker or node is lost is run again by Ray (``settings.retries`` times; its ``attempts`` say how many
    runs it took); when the retries run out it is an error with exit code 6 (:class:`WorkerLost`), run again on the next
    invocation, and the other points go on.
    """
    results: list[dict[str, Any] | None] = []
    todo: list[int] = []
    for i, p in enumerate(spec.points):
        done = finished(p)
        results.append(None if done is None else {**done, "skipped": True})
        if done is None:
            todo.append(i)
        elif on_done is not None:
            on_done(results[-1])
    if todo:
        ray = connect(settings)
        # a point whose worker or node is lost runs again (Ray's max_retries); its build cleans the dead attempt's staging folder
        tasks = TaskGroup(ray, run_point, settings, num_cpus=cpus_per_build)
        refs = [tasks.submit(f"sweep point {spec.points[i].folder_name} ({_params(spec.points[i])})", spec.points[i]) for i in todo]

        def report(j: int) -> None:
            if on_done is not None:
                on_done(fresh[j])

        fresh: list[Any] = [None] * len(refs)
        index = {ref: j for j, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done_refs, pending = ray.wait(pending, num_returns=1)
            for ref in done_refs:
                j = index[ref]
                point = spec.points[todo[j]]
                try:
                    fresh[j] = tasks.result(ref)
                except WorkerLost as exc:  # lost more often than Ray retries: this point failed (rerun: it runs again), the others go on
                    lost = {"status": "error", "exit_code": exc.exit_code, "error": exc.message}
                    fresh[j] = {"key": point.key, "params": point.params, **lost}
                except Exception as exc:  # a bug outside the build's own guard: this point failed, the others go on
                    reason = f"the Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    fresh[j] = {"key": point.key, "params": point.params, "status": "error", "exit_code": 4, "error": reason}
                fresh[j]["attempts"] = max(1, len(tasks.attempts(ref)))
                report(j)
        tasks.record(refs)
        for j, i in enumerate(todo):
            results[i] = {**fresh[j], "skipped": False}
    return [r for r in results if r is not None]
