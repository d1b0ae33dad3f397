"""Validation: FP32 reference vs a candidate on the same preprocessed inputs; latency of both.

``validate`` compares a candidate runner against reference outputs (computed here or loaded
from ``ref.npz``) and times it against an FP32 baseline in the same run. ``build``'s use of it
(reference once, auto-fallback, layerwise blame) is :mod:`rescompile.pipeline.validator`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rescompile.config import RaySettings
from rescompile.progress import progress
from rescompile.runtime.memory import peak_rss_mib, reset_peak_rss
from rescompile.runtime.runners import Runner
from rescompile.validate.latency import Latency, LatencyPlan, LatencySettings, measure_all
from rescompile.validate.metrics import Accuracy, Agreement, ClassDelta, Metrics, compare_outputs
from rescompile.validate.reference import ReferenceOutputs, ValidationInputs
from rescompile.validate.schema import REPORT_SCHEMA


@dataclass(frozen=True)
class ValidateSettings:
    batch_size: int = 64
    latency: LatencySettings = field(default_factory=LatencySettings)
    threads: int | None = None
    progress: bool = False
    layerwise_samples: int = 64  # inputs run through both graphs with every tensor exposed
    ray: RaySettings | None = None  # reference and candidate over shards on Ray, latency in one Ray task


def _sharded(
    runner: Runner, inputs: ValidationInputs, settings: ValidateSettings, label: str, keep_inputs: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """Outputs over shards on Ray (rescompile.validate.on_ray) when ``settings.ray`` is set and the runner can go there."""
    if settings.ray is None:
        return None
    from rescompile.validate.on_ray import outputs_on_ray

    with progress(f"{label} on {settings.ray.where()}", inputs.count, settings.progress) as advance:
        return outputs_on_ray(runner, inputs, settings.ray, settings.batch_size, keep_inputs=keep_inputs, on_batch=advance)


def run_outputs(runner: Runner, inputs: ValidationInputs, settings: ValidateSettings, label: str) -> np.ndarray:
    """``runner``'s logits on every input, in order, with a progress bar."""
    sharded = _sharded(runner, inputs, settings, label)
    if sharded is not None:
        return sharded[0]
    with progress(label, inputs.count, settings.progress) as advance:
        return inputs.outputs(runner, settings.batch_size, on_batch=advance)[0]


def compute_reference(
    runner: Runner,
    inputs: ValidationInputs,
    settings: ValidateSettings,
    *,
    keep_inputs: bool = False,
    meta: dict[str, Any] | None = None,
) -> ReferenceOutputs:
    """Run the FP32 reference over ``inputs``; keep the inputs too when they will be saved."""
    t0 = time.perf_counter()
    label = f"reference ({runner.name})"
    outputs = _sharded(runner, inputs, settings, label, keep_inputs)
    if outputs is None:
        with progress(label, inputs.count, settings.progress) as advance:
            outputs = inputs.outputs(runner, settings.batch_size, keep_inputs=keep_inputs, on_batch=advance)
    logits, labels, kept = outputs
    return ReferenceOutputs(
        logits.astype(np.float32),
        labels,
        kept,
        {"runner": runner.name, "source": inputs.name, "class_names": list(inputs.class_names), **(meta or {})},
        round(time.perf_counter() - t0, 3),
    )


@dataclass
class Measurement:
    """What :func:`validate` measured: the part of report.json that ``build``, ``validate`` and ``deploy`` share.

    Every result is typed (:mod:`rescompile.validate.metrics`, :mod:`rescompile.validate.latency`); gates
    (:func:`rescompile.validate.gates.evaluate_gates`) and renderers read these attributes. ``to_dict`` is
    the report's JSON, :meth:`from_dict` reads it back (a damaged field is a UsageError naming it).
    """

    source: str
    samples: int
    reference: str  # the runner that produced the FP32 logits
    candidate: str  # the runner under test
    baseline: str | None  # the FP32 runner timed in the same run, if any
    accuracy: Accuracy  # top-1/top-5 of both and the top-1 drop
    agreement: Agreement  # top-1 agreement, logit cosine, abs errors
    per_class: list[ClassDelta] = field(default_factory=list)  # worst drop first
    class_names: list[str] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)  # one record per runner and batch size
    speedup: dict[str, float] = field(default_factory=dict)  # baseline p50 / candidate p50, by batch size
    peak_rss_mib: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # batch size, latency options, threads
    latency_plan: LatencyPlan | None = None  # how latency was timed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step of the validation
    scale: dict[str, Any] | None = None  # where a run on Ray ran

    @property
    def metrics(self) -> Metrics:
        return Metrics(self.accuracy, self.agreement, self.per_class)

    def candidate_latency(self, batch: int | None) -> Latency | None:
        """The candidate's latency record at ``batch``, or None when that batch size was not measured."""
        return next((r for r in self.latency if r.role == "candidate" and r.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": REPORT_SCHEMA,
            "source": self.source,
            "samples": self.samples,
            "reference": self.reference,
            "candidate": self.candidate,
            "baseline": self.baseline,
            **self.metrics.to_dict(),
        }
        if self.class_names:
            d["class_names"] = list(self.class_names)
        d.update(
            {
                "latency": [r.to_dict() for r in self.latency],
                "speedup_int8_vs_fp32_p50": self.speedup,
                "memory": {"peak_rss_mib": self.peak_rss_mib},
                "settings": self.settings,
                "latency_plan": {} if self.latency_plan is None else self.latency_plan.to_dict(),
                "timings_s": self.timings,
            }
        )
        if self.scale is not None:
            d["scale"] = self.scale
        return d

    @classmethod
    def from_dict(cls, doc: dict[str, Any], what: str = "report") -> Measurement:
        """The measurement part of a report.json (the keys :meth:`to_dict` writes; others are ignored).

        Raises:
            UsageError: a field is missing or of the wrong type; the message names it (``report: accuracy.candidate: ...``).
        """
        from rescompile.errors import UsageError
        from rescompile.readers import from_mapping, short

        keys = {
            "speedup_int8_vs_fp32_p50": "speedup",
            "timings_s": "timings",
            **{f: f for f in ("source", "samples", "reference", "candidate", "baseline", "accuracy", "agreement", "per_class")},
            **{f: f for f in ("class_names", "latency", "settings", "latency_plan", "scale")},
        }
        fields_ = {ours: doc[theirs] for theirs, ours in keys.items() if theirs in doc}
        if fields_.get("latency_plan") == {}:
            fields_["latency_plan"] = None
        memory = doc.get("memory")
        if isinstance(memory, dict) and "peak_rss_mib" in memory:
            fields_["peak_rss_mib"] = memory["peak_rss_mib"]
        speedup = fields_.get("speedup")
        if isinstance(speedup, dict) and not all(str(k).isdigit() and len(str(k)) < 10 for k in speedup):
            got = short(sorted(map(str, speedup)))
            raise UsageError(f"{what}: field 'speedup_int8_vs_fp32_p50' must be keyed by batch size, got {got}")
        return from_mapping(cls, fields_, what)  # type: ignore[no-any-return]


def validate(
    reference: ReferenceOutputs,
    candidate: Runner,
    inputs: ValidationInputs,
    *,
    baseline: Runner | None = None,
    settings: ValidateSettings | None = None,
    other_s: float = 0.0,
) -> Measurement:
    """Accuracy, agreement and latency of ``candidate`` against ``reference`` on ``inputs``.

    Args:
        reference: FP32 logits (and labels) for exactly ``inputs``.
        candidate: the model under test (INT8 ONNX on ONNX Runtime, a TensorRT plan, FP16 ...).
        inputs: the same preprocessed inputs the reference saw.
        baseline: an FP32 runner timed in the same run (for the speedup); None skips it.
        other_s: seconds of work before this call (the build's stages); latency's default budget is a
            quarter of it plus this validation's own inference time.

    Returns:
        The Measurement (``to_dict``: the report, ``rescompile.report/1``, without gates).
    """
    settings = settings or ValidateSettings()
    settings.latency.check()
    if inputs.count != len(reference.logits):
        from rescompile.errors import UsageError

        raise UsageError(f"the reference holds {len(reference.logits)} outputs but the validation set has {inputs.count} samples")
    timings: dict[str, float] = {} if reference.seconds is None else {"reference_s": reference.seconds}
    reset_peak_rss()
    t0 = time.perf_counter()
    cand = run_outputs(candidate, inputs, settings, f"candidate ({candidate.name})")
    timings["candidate_s"] = round(time.perf_counter() - t0, 3)
    peak = peak_rss_mib()
    metrics = compare_outputs(reference.logits, cand, reference.labels)
    result = Measurement(
        source=inputs.name,
        samples=int(len(cand)),
        reference=reference.runner,
        candidate=candidate.name,
        baseline=None if baseline is None else baseline.name,
        accuracy=metrics.accuracy,
        agreement=metrics.agreement,
        per_class=metrics.per_class,
        class_names=list(inputs.class_names),
    )
    t0 = time.perf_counter()
    sample = inputs.head(max(settings.latency.batches))
    other = other_s + sum(timings.values())  # the build so far, the reference and the candidate outputs
    latency, speedup, plan = _latency(result, candidate, baseline, sample, settings, other)
    timings["latency_s"] = round(time.perf_counter() - t0, 3)
    result.latency, result.speedup = latency, speedup
    result.peak_rss_mib = max([peak] + [r.peak_rss_mib for r in latency])
    result.settings = _settings_record(settings)
    result.latency_plan = plan  # measured: the budget follows the run's own times
    result.timings = timings
    return result


def _latency(
    result: Measurement, candidate: Runner, baseline: Runner | None, sample: np.ndarray, settings: ValidateSettings, other_s: float
) -> tuple[list[Latency], dict[str, float], LatencyPlan]:
    """Latency and speedup per batch size, and the plan they were measured by: on Ray when ``settings.ray`` says so
    (recording where in ``result.scale``), else (or when Ray declined) here."""
    timed, ray = None, settings.ray
    if ray is not None:
        from rescompile.validate.on_ray import latency_on_ray

        timed = latency_on_ray(candidate, baseline, sample, settings.latency, ray, other_s)
    if timed is None or ray is None:
        return measure_all(candidate, baseline, sample, settings.latency, other_s=other_s, show_progress=settings.progress)
    latency, speedup, plan, where = timed
    result.scale = {
        "ray": ray.where(),
        "shards": ray.shards,
        "threads_per_shard": getattr(candidate, "threads", None) or 1,
        "latency_measured_on": where,
        "max_retries": ray.retries,
        "retries": list(ray.retried),  # tasks Ray ran again after losing their worker or node (this build's, so far)
    }
    return latency, speedup, plan


def _settings_record(settings: ValidateSettings) -> dict[str, Any]:
    """The report's ``settings``: batch size, latency batches, warm-up, runs, budget and threads."""
    lat = settings.latency
    return {
        "batch_size": settings.batch_size,
        "latency_batches": list(lat.batches),
        "latency_warmup": lat.warmup,
        "latency_runs": lat.runs,
        "latency_budget_s": lat.budget_s,
        "threads": settings.threads,
    }
