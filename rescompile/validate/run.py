"""Validation: FP32 reference vs a candidate on the same preprocessed inputs; latency of both.

``validate`` compares a candidate runner against reference outputs (computed here or loaded
from ``ref.npz``) and times it against an FP32 baseline in the same run; ``BuildValidator``
serves ``rescompile build`` (auto-fallback, then validation with layerwise blame).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rescompile.config import BuildConfig
from rescompile.data.preprocess import Preprocess
from rescompile.data.sources import DataSource
from rescompile.progress import progress
from rescompile.runtime.memory import peak_rss_mib, reset_peak_rss
from rescompile.runtime.runners import OnnxRuntimeRunner, Runner, TorchRunner
from rescompile.validate.latency import LatencySettings, measure_runners
from rescompile.validate.metrics import compare_outputs
from rescompile.validate.reference import ReferenceOutputs, ValidationInputs, save_reference

REPORT_SCHEMA = "rescompile.report/1"


@dataclass(frozen=True)
class ValidateSettings:
    batch_size: int = 64
    latency: LatencySettings = field(default_factory=LatencySettings)
    threads: int | None = None
    progress: bool = False
    layerwise_samples: int = 64  # inputs run through both graphs with every tensor exposed
    ray: Any = None  # RaySettings: reference and candidate over shards on Ray, latency in one Ray task

    @classmethod
    def from_config(cls, cfg: BuildConfig) -> ValidateSettings:
        gate = () if cfg.gates.latency_batch is None else (cfg.gates.latency_batch,)
        lat = LatencySettings(tuple(cfg.latency_batches), cfg.latency_warmup, cfg.latency_runs, cfg.latency_budget_s,
                              required=gate)  # fmt: skip
        return cls(cfg.batch_size, lat, cfg.threads, cfg.progress, ray=cfg.ray_settings())


def _sharded(runner: Runner, inputs: ValidationInputs, settings: ValidateSettings, label: str,
             keep_inputs: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:  # fmt: skip
    """Outputs over shards on Ray (rescompile.scale.ray_validate) when ``settings.ray`` is set and the runner can go there."""
    if settings.ray is None:
        return None
    from rescompile.scale.ray_validate import outputs_on_ray

    with progress(f"{label} on {settings.ray.where()}", inputs.count, settings.progress) as advance:
        return outputs_on_ray(runner, inputs, settings.ray, settings.batch_size, keep_inputs=keep_inputs, on_batch=advance)


def run_outputs(runner: Runner, inputs: ValidationInputs, settings: ValidateSettings, label: str) -> np.ndarray:
    """``runner``'s logits on every input, in order, with a progress bar."""
    sharded = _sharded(runner, inputs, settings, label)
    if sharded is not None:
        return sharded[0]
    out = []
    with progress(label, inputs.count, settings.progress) as advance:
        for x, _ in inputs.batches(settings.batch_size):
            out.append(runner.infer(x))
            advance(len(x))
    return np.concatenate(out)


def compute_reference(
    runner: Runner, inputs: ValidationInputs, settings: ValidateSettings, *, keep_inputs: bool = False,
    meta: dict[str, Any] | None = None,
) -> ReferenceOutputs:  # fmt: skip
    """Run the FP32 reference over ``inputs``; keep the inputs too when they will be saved."""
    logits, labels, kept = [], [], []
    t0 = time.perf_counter()
    sharded = _sharded(runner, inputs, settings, f"reference ({runner.name})", keep_inputs)
    if sharded is not None:
        logits, labels, kept = [sharded[0]], [] if sharded[1] is None else [sharded[1]], [] if sharded[2] is None else [sharded[2]]
    with progress(f"reference ({runner.name})", 0 if sharded is not None else inputs.count, settings.progress) as advance:
        for x, y in inputs.batches(settings.batch_size) if sharded is None else ():
            logits.append(runner.infer(x))
            if y is not None:
                labels.append(y)
            if keep_inputs:
                kept.append(np.asarray(x, np.float32))
            advance(len(x))
    return ReferenceOutputs(
        np.concatenate(logits).astype(np.float32), np.concatenate(labels) if labels else None,
        np.concatenate(kept) if keep_inputs else None,
        {"runner": runner.name, "source": inputs.name, "class_names": list(inputs.class_names), **(meta or {})},
        round(time.perf_counter() - t0, 3),
    )  # fmt: skip


def measure_all(
    candidate: Runner, baseline: Runner | None, sample: np.ndarray, settings: ValidateSettings, other_s: float = 0.0,
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:  # fmt: skip
    """Latency of the baseline and the candidate at each batch size (:func:`measure_runners`);
    speedup = baseline p50 / candidate p50; and the latency plan (mode, budget, skipped batch sizes)."""
    lat = settings.latency
    runners = [(baseline, "baseline")] if baseline is not None else []
    runners.append((candidate, "candidate"))
    with progress("latency", len(lat.batches) * len(runners), settings.progress) as advance:
        measured, plan = measure_runners(runners, sample, lat, other_s=other_s, on_run=lambda: advance(1))
    records = [r.to_dict() for r in measured]
    speedup = {}
    if baseline is not None:
        for batch in sorted({r["batch"] for r in records}):
            b = next(r for r in records if r["batch"] == batch and r["role"] == "baseline")
            c = next(r for r in records if r["batch"] == batch and r["role"] == "candidate")
            speedup[str(batch)] = b["p50_ms"] / c["p50_ms"]
    return records, speedup, plan


def validate(
    reference: ReferenceOutputs,
    candidate: Runner,
    inputs: ValidationInputs,
    *,
    baseline: Runner | None = None,
    settings: ValidateSettings | None = None,
    other_s: float = 0.0,
) -> dict[str, Any]:
    """Accuracy, agreement and latency of ``candidate`` against ``reference`` on ``inputs``.

    Args:
        reference: FP32 logits (and labels) for exactly ``inputs``.
        candidate: the model under test (INT8 ONNX on ONNX Runtime, a TensorRT plan, FP16 ...).
        inputs: the same preprocessed inputs the reference saw.
        baseline: an FP32 runner timed in the same run (for the speedup); None skips it.
        other_s: seconds of work before this call (the build's stages); latency's default budget is a
            quarter of it plus this validation's own inference time.

    Returns:
        The report (``rescompile.report/1``) without gates.
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
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "source": inputs.name,
        "samples": int(len(cand)),
        "reference": reference.runner,
        "candidate": candidate.name,
        "baseline": None if baseline is None else baseline.name,
        **compare_outputs(reference.logits, cand, reference.labels),
    }
    if inputs.class_names:
        report["class_names"] = list(inputs.class_names)
    t0 = time.perf_counter()
    sample = inputs.head(max(settings.latency.batches))
    other = other_s + sum(timings.values())  # the build so far, the reference and the candidate outputs
    timed = None
    if settings.ray is not None:
        from rescompile.scale.ray_validate import latency_on_ray

        timed = latency_on_ray(candidate, baseline, sample, settings, settings.ray, other)
    if timed is None:
        latency, speedup, plan = measure_all(candidate, baseline, sample, settings, other)
    else:
        latency, speedup, plan, where = timed
        report["scale"] = {"ray": settings.ray.where(), "shards": settings.ray.shards,
                           "threads_per_shard": getattr(candidate, "threads", None) or 1, "latency_measured_on": where}
    timings["latency_s"] = round(time.perf_counter() - t0, 3)
    report["latency"] = latency
    report["speedup_int8_vs_fp32_p50"] = speedup
    report["memory"] = {"peak_rss_mib": max([peak] + [r["peak_rss_mib"] for r in latency])}
    lat = settings.latency
    report["settings"] = {
        "batch_size": settings.batch_size, "latency_batches": list(lat.batches), "latency_warmup": lat.warmup,
        "latency_runs": lat.runs, "latency_budget_s": lat.budget_s, "threads": settings.threads,
    }  # fmt: skip
    report["latency_plan"] = plan  # measured: the budget follows the run's own times
    report["timings_s"] = timings
    return report


def validate_models(
    reference: Any, fp32_onnx: onnx.ModelProto, candidate: onnx.ModelProto, source: DataSource,
    pre: Preprocess, cfg: BuildConfig,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy, agreement and latency of ``candidate`` (INT8, ONNX Runtime) against ``reference``.

    Args:
        reference: the FP32 PyTorch module, or an FP32 ONNX model when there is none.
        fp32_onnx: the FP32 simplified ONNX model (latency baseline on the same runtime).
        candidate: the INT8 model.
    """
    return BuildValidator(reference, fp32_onnx, source, pre, cfg).validate(candidate)


def reference_runner(reference: Any, threads: int | None) -> Runner:
    """The runner for an FP32 reference: a PyTorch module, or an FP32 ONNX model."""
    if isinstance(reference, onnx.ModelProto):
        return OnnxRuntimeRunner(reference, "onnxruntime-fp32", threads)
    return TorchRunner(reference, "pytorch-fp32", threads)


class BuildValidator:
    """The validation stages of ``build``: the FP32 reference is computed once (lazily) and serves
    auto-fallback (before the engine stage) and the final validation with layerwise blame.

    Reads ``cfg.auto_fallback`` (most layers to keep in FP), ``cfg.layerwise`` and ``cfg.save_reference``.
    """

    def __init__(self, reference: Any, fp32_onnx: onnx.ModelProto, source: DataSource, pre: Preprocess,
                 cfg: BuildConfig) -> None:  # fmt: skip
        self.settings = ValidateSettings.from_config(cfg)
        self.settings.latency.check()
        self.cfg, self.fp32, self.pre = cfg, fp32_onnx, pre
        self.inputs = ValidationInputs.from_source(source, pre)
        self._reference_model = reference
        self._ref: ReferenceOutputs | None = None
        self.fallback_result: Any = None

    @property
    def reference(self) -> ReferenceOutputs:
        if self._ref is None:
            runner = reference_runner(self._reference_model, self.cfg.threads)
            self._ref = compute_reference(runner, self.inputs, self.settings, keep_inputs=self.cfg.save_reference is not None,
                                          meta={"preprocess": self.pre.to_dict(), "model": self.cfg.model})  # fmt: skip
        return self._ref

    def fallback(self, int8: onnx.ModelProto, plan: Any, ranges: dict[str, Any]) -> Any:
        """Run auto-fallback (``cfg.auto_fallback`` layers at most); the result holds the final model and plan."""
        from rescompile.validate.fallback import auto_fallback

        cfg = self.cfg
        self.fallback_result = auto_fallback(
            self.fp32, int8, plan, ranges, self.reference, self.inputs, cfg.gates, cfg.auto_fallback, policy=plan.policy,
            keep_fp=tuple(cfg.keep_fp), keep_first_last=cfg.keep_first_last, settings=self.settings,
        )  # fmt: skip
        return self.fallback_result

    def validate(self, int8: onnx.ModelProto, other_s: float = 0.0) -> dict[str, Any]:
        """The report (without gates) of ``int8`` against the reference; FP32 ONNX timed as the baseline.

        ``other_s``: seconds the build took so far (the default latency budget is a share of the whole).
        A candidate whose CPU latency is not representative (:func:`latency_notes`) is timed briefly.
        """
        from rescompile.validate.layerwise import layerwise_blame
        from rescompile.validate.notes import latency_notes

        threads = self.cfg.threads
        cand = OnnxRuntimeRunner(int8, "onnxruntime-int8", threads)
        settings = self.settings
        if latency_notes(int8, cand.name):
            settings = replace(settings, latency=replace(settings.latency, brief=True))
        report = validate(self.reference, cand, self.inputs, baseline=OnnxRuntimeRunner(self.fp32, "onnxruntime-fp32", threads),
                          settings=settings, other_s=other_s)  # fmt: skip
        if self.cfg.layerwise:
            t0 = time.perf_counter()
            report["layerwise"] = layerwise_blame(self.fp32, int8, self.inputs.head(self.settings.layerwise_samples)).to_dict()
            report["timings_s"]["layerwise_s"] = round(time.perf_counter() - t0, 3)
        if self.fallback_result is not None:
            report["fallback"] = self.fallback_result.to_dict()
        if self.cfg.save_reference is not None:
            save_reference(Path(self.cfg.save_reference), self.reference)
        return report
