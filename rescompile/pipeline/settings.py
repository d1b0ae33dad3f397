"""The build's settings stage by stage: the groups of :class:`BuildConfig` each stage reads, resolved and checked, and
every check that can run before any work (exit 2 or 3 before anything is loaded).

Only the pipeline sees the whole ``BuildConfig``; a stage, the validator and the gates see their own part. The
checks build and ``validate`` share (the gate batch, the latency settings, the brief-latency switch, the fallback
gate) are here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.calibrate.collect import CollectSettings
from rescompile.config import (
    AutoFallback,
    BuildConfig,
    CalibrateSettings,
    DataSettings,
    ExportConfig,
    Gates,
    LatencySettings,
    ModelSpec,
    PlanSettings,
    PreprocessSettings,
    RaySettings,
    TransformSettings,
)
from rescompile.engine.targets import Target
from rescompile.errors import UsageError
from rescompile.validate.gates import accuracy_gates, any_gate, check_thresholds
from rescompile.validate.run import ValidateSettings

if TYPE_CHECKING:
    import onnx

__all__ = [
    "AutoFallback",
    "CalibrateSettings",
    "DataSettings",
    "ExportConfig",
    "LatencySettings",
    "ModelSpec",
    "PlanSettings",
    "PreprocessSettings",
    "TransformSettings",
]

BACKENDS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class CalibrateStage:
    """What the calibrate stage reads: the method, how statistics are collected, progress and Ray."""

    settings: CalibrateSettings = field(default_factory=CalibrateSettings)
    collect: CollectSettings = field(default_factory=CollectSettings)
    progress: bool = False
    ray: RaySettings | None = None


@dataclass(frozen=True)
class EngineStageSettings:
    """The TensorRT engine stage (``backend="tensorrt"``): the checked target and the batch sizes to optimize for."""

    target: Target
    batches: tuple[int, ...]


FALLBACK_UNITS = ("auto", "layer", "block")  # docs/fallback.md#units


@dataclass(frozen=True)
class FallbackSettings:
    """Auto-fallback (docs/fallback.md): at most ``limit`` units kept in FP (besides the user's), aiming at the accuracy
    ``gates``; ``unit`` what one step keeps (``auto``, ``layer``, ``block``); ``rank_samples`` the ranking subset;
    ``step_backs`` undone steps allowed in a row; ``seed`` the ranking/gate split's."""

    limit: int
    gates: Gates
    keep_fp: tuple[str, ...] = ()
    keep_first_last: bool = False
    unit: str = "auto"
    rank_samples: int = 300
    step_backs: int = 2
    seed: int = 0

    @classmethod
    def of(cls, choice: AutoFallback, gates: Gates, plan: PlanSettings, seed: int) -> FallbackSettings | None:
        """The search asked for by ``choice`` (None when its limit is 0), checked (:meth:`check`)."""
        if not choice.limit:
            return None
        found = cls(choice.limit, gates, plan.keep_fp, plan.keep_first_last, choice.unit, choice.rank_samples, seed=seed)
        found.check()
        return found

    def check(self) -> None:
        """UsageError (exit 2) for a search that cannot run: no accuracy gate to aim for, a limit below 1, an unknown unit."""
        if not any_gate(accuracy_gates(self.gates)):
            hint = "add --max-top1-drop, --min-agreement, --min-cosine or --max-class-drop"
            raise UsageError("--auto-fallback needs an accuracy gate to aim for", hint=hint)
        if self.limit < 1:
            raise UsageError(f"the auto-fallback limit must be >= 1, got {self.limit}")
        if self.unit not in FALLBACK_UNITS:
            raise UsageError(f"unknown fallback unit {self.unit!r} (--fallback-unit)", hint=" | ".join(FALLBACK_UNITS))
        if self.rank_samples < 1:
            raise UsageError(f"--fallback-rank-samples must be >= 1, got {self.rank_samples}")


@dataclass(frozen=True)
class ValidatorSettings:
    """What the build's validator reads (:class:`rescompile.pipeline.validator.BuildValidator`)."""

    validate: ValidateSettings = field(default_factory=ValidateSettings)
    layerwise: bool = False
    save_reference: Path | None = None
    fallback: FallbackSettings | None = None
    model_label: str = "demo"  # recorded with the reference (ref.npz)


@dataclass(frozen=True)
class BuildSettings:
    model: ModelSpec
    data: DataSettings
    pre: PreprocessSettings
    recipe: dict[str, Any]  # the values of ``pre.recipe``, read once
    export: ExportConfig
    plan: PlanSettings
    calibrate: CalibrateStage
    validator: ValidatorSettings
    engine: EngineStageSettings | None
    gates: Gates
    out: Path | None
    transform: TransformSettings = field(default_factory=TransformSettings)
    batch_size: int = 64  # calibration inputs per run of equalize and bias correction


def checked_latency(latency: LatencySettings, gates: Gates) -> LatencySettings:
    """``latency`` with the batch size the latency gates read always timed (``required``), checked (build and validate).

    Raises:
        UsageError: the gate batch is not a timed batch size; nonsense latency options (exit 2).
    """
    gate_batch = gates.latency_batch
    if gate_batch is not None and gate_batch not in latency.batches:
        raise UsageError(f"--gate-batch {gate_batch} is not a timed batch size {list(latency.batches)}", hint="add it with --latency-batch")
    latency = replace(latency, batches=tuple(latency.batches), required=() if gate_batch is None else (gate_batch,))
    latency.check()
    return latency


def timed_for(settings: ValidateSettings, candidate: onnx.ModelProto | None, runner: str) -> ValidateSettings:
    """``settings``, timed briefly when the candidate's latency on ``runner`` is not representative
    (:func:`rescompile.validate.notes.latency_notes`, e.g. signed INT8 activations on ONNX Runtime's CPU provider)."""
    from rescompile.validate.notes import latency_notes

    if latency_notes(candidate, runner):
        return replace(settings, latency=replace(settings.latency, brief=True))
    return settings


def check_validation_options(cfg: BuildConfig) -> LatencySettings:
    """The gates and validation options of ``cfg``, checked before any work (UsageError, exit 2); the latency settings."""
    check_thresholds(cfg.gates)
    FallbackSettings.of(cfg.fallback, cfg.gates, cfg.plan, cfg.data.seed)
    if cfg.save_reference is not None and Path(cfg.save_reference).suffix != ".npz":
        raise UsageError(f"--save-reference needs a .npz path, got {cfg.save_reference}")
    return checked_latency(cfg.latency, cfg.gates)


def validator_settings(cfg: BuildConfig, latency: LatencySettings | None = None) -> ValidatorSettings:
    """The validator's part of ``cfg`` (``latency``: already checked, else checked here)."""
    latency = latency or check_validation_options(cfg)
    fallback = FallbackSettings.of(cfg.fallback, cfg.gates, cfg.plan, cfg.data.seed)
    validate = ValidateSettings(cfg.batch_size, latency, cfg.threads, cfg.progress, ray=cfg.ray)
    return ValidatorSettings(validate, cfg.layerwise, cfg.save_reference, fallback, cfg.model.spec)


def build_settings(cfg: BuildConfig) -> BuildSettings:
    """Each stage's settings from ``cfg``'s groups, checking on the way everything that needs no work.

    Raises:
        UsageError: an unknown policy or backend, nonsense gates or latency options, a bad recipe, an output
            folder that cannot be published to (exit 2).
        MissingDependency: ``backend="tensorrt"`` without TensorRT or a GPU (exit 3).
    """
    from rescompile.calibrate.ranges import check_method
    from rescompile.data.layout import data_layout
    from rescompile.data.preprocess import load_recipe
    from rescompile.publish import check_out
    from rescompile.quantize.registry import parse_policy

    backend = cfg.backend
    policy = parse_policy(cfg.plan.policy, backend.backend).name  # "auto": the backend's policy; checked before any work
    check_method(cfg.calibrate.method, cfg.calibrate.percentile)
    latency = check_validation_options(cfg)
    if backend.backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend.backend!r}", hint="onnxruntime or tensorrt")
    engine = None
    if backend.backend == "tensorrt":  # target, TensorRT and GPU are checked before any work (exit 2 / 3)
        from rescompile.engine.tensorrt import preflight

        engine = EngineStageSettings(preflight(backend.target), (*latency.batches, cfg.batch_size))
    if cfg.out is not None:
        check_out(Path(cfg.out))  # --out can be published to: exit 2 before any work (again, by staged(), at the end)
    recipe = load_recipe(cfg.pre.recipe) if cfg.pre.recipe is not None else {}
    return BuildSettings(
        model=cfg.model,
        data=replace(cfg.data, layout=data_layout(cfg.data.layout, recipe)),
        pre=cfg.pre,
        recipe=recipe,
        export=cfg.export,
        plan=replace(cfg.plan, policy=policy, keep_fp=tuple(cfg.plan.keep_fp)),
        calibrate=CalibrateStage(cfg.calibrate, CollectSettings(cfg.batch_size, threads=cfg.threads), cfg.progress, cfg.ray),
        validator=validator_settings(cfg, latency),
        engine=engine,
        gates=cfg.gates,
        out=None if cfg.out is None else Path(cfg.out),
        transform=cfg.transform,
        batch_size=cfg.batch_size,
    )
