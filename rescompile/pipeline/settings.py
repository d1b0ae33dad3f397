"""The build's settings stage by stage: the 41 fields of :class:`BuildConfig` split into the small values each
stage reads, and every check that can run before any work (exit 2 or 3 before anything is loaded).

Only the pipeline sees the whole ``BuildConfig``; a stage, the validator and the gates see their own part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescompile.config import BuildConfig, Gates, RaySettings
from rescompile.engine.targets import Target
from rescompile.errors import UsageError
from rescompile.export import ExportConfig
from rescompile.validate.gates import accuracy_gates, any_gate, check_thresholds
from rescompile.validate.latency import LatencySettings
from rescompile.validate.run import ValidateSettings

BACKENDS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (:func:`rescompile.models.load_model`)."""

    spec: str = "demo"
    weights: Path | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: int | None = None
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class DataSettings:
    """Where the calibration and validation data come from (:func:`rescompile.data.holdout.choose_data`)."""

    calib: str = "demo-calib"
    val: str | None = None
    calib_size: int | None = None
    val_size: int | None = None
    layout: str = "nchw"
    seed: int = 0


@dataclass(frozen=True)
class PreprocessSettings:
    """The preprocessing asked for: a preset, a YAML recipe's values, then flags (:func:`resolve_preprocess`)."""

    recipe: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    size: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None
    channel_order: str | None = None


@dataclass(frozen=True)
class PlanSettings:
    """Placement: the policy (resolved from ``auto``) and the layers kept in floating point."""

    policy: str = "tensorrt"
    keep_fp: tuple[str, ...] = ()
    keep_first_last: bool = False


@dataclass(frozen=True)
class CalibrateSettings:
    method: str = "max"
    percentile: float = 99.99
    batch_size: int = 64
    threads: int | None = None
    progress: bool = False
    ray: RaySettings | None = None


@dataclass(frozen=True)
class TransformSettings:
    """Function-preserving rewrites of the float model and the INT8 one's bias correction (docs/equalize.md)."""

    equalize: bool = False
    bias_correction: bool = False
    batch_size: int = 64  # calibration inputs per ONNX Runtime run


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
    export: ExportConfig
    plan: PlanSettings
    calibrate: CalibrateSettings
    validator: ValidatorSettings
    engine: EngineStageSettings | None
    gates: Gates
    out: Path | None
    transform: TransformSettings = field(default_factory=TransformSettings)


def check_validation_options(cfg: BuildConfig) -> LatencySettings:
    """The gates and validation options of ``cfg``, checked before any work (UsageError, exit 2); the latency settings."""
    gates = cfg.gates
    check_thresholds(gates)
    if gates.latency_batch is not None and gates.latency_batch not in cfg.latency_batches:
        raise UsageError(
            f"--gate-batch {gates.latency_batch} is not a timed batch size {list(cfg.latency_batches)}", hint="add it with --latency-batch"
        )
    if cfg.auto_fallback and not any_gate(accuracy_gates(gates)):
        hint = "add --max-top1-drop, --min-agreement, --min-cosine or --max-class-drop"
        raise UsageError("--auto-fallback needs an accuracy gate to aim for", hint=hint)
    if cfg.fallback_unit not in FALLBACK_UNITS:
        raise UsageError(f"unknown --fallback-unit {cfg.fallback_unit!r}", hint=" | ".join(FALLBACK_UNITS))
    if cfg.fallback_rank_samples < 1:
        raise UsageError(f"--fallback-rank-samples must be >= 1, got {cfg.fallback_rank_samples}")
    if cfg.save_reference is not None and Path(cfg.save_reference).suffix != ".npz":
        raise UsageError(f"--save-reference needs a .npz path, got {cfg.save_reference}")
    required = () if gates.latency_batch is None else (gates.latency_batch,)
    latency = LatencySettings(tuple(cfg.latency_batches), cfg.latency_warmup, cfg.latency_runs, cfg.latency_budget_s, required=required)
    latency.check()
    return latency


def validator_settings(cfg: BuildConfig, latency: LatencySettings | None = None, ray: RaySettings | None = None) -> ValidatorSettings:
    """The validator's part of ``cfg`` (``latency``, ``ray``: already checked ones, else checked here)."""
    latency = latency or check_validation_options(cfg)
    ray = ray or cfg.ray_settings()
    fallback = None
    if cfg.auto_fallback:
        fallback = FallbackSettings(
            cfg.auto_fallback,
            accuracy_gates(cfg.gates),
            tuple(cfg.keep_fp),
            cfg.keep_first_last,
            unit=cfg.fallback_unit,
            rank_samples=cfg.fallback_rank_samples,
            seed=cfg.seed,
        )
    validate = ValidateSettings(cfg.batch_size, latency, cfg.threads, cfg.progress, ray=ray)
    return ValidatorSettings(validate, cfg.layerwise, cfg.save_reference, fallback, cfg.model)


def build_settings(cfg: BuildConfig) -> BuildSettings:
    """Split ``cfg`` into the stages' settings, checking on the way everything that needs no work.

    Raises:
        UsageError: an unknown policy or backend, nonsense gates or latency options, a bad recipe or
            Ray option, an output folder that cannot be published to (exit 2).
        MissingDependency: ``backend="tensorrt"`` without TensorRT or a GPU (exit 3).
    """
    from rescompile.data.layout import data_layout
    from rescompile.data.preprocess import load_recipe
    from rescompile.publish import check_out
    from rescompile.quantize.registry import parse_policy

    policy = parse_policy(cfg.policy, cfg.backend).name  # "auto": the backend's policy; checked before any work
    latency = check_validation_options(cfg)
    if cfg.backend not in BACKENDS:
        raise UsageError(f"unknown backend {cfg.backend!r}", hint="onnxruntime or tensorrt")
    engine = None
    if cfg.backend == "tensorrt":  # target, TensorRT and GPU are checked before any work (exit 2 / 3)
        from rescompile.engine.tensorrt import preflight

        engine = EngineStageSettings(preflight(cfg.target), (*cfg.latency_batches, cfg.batch_size))
    if cfg.out is not None:
        check_out(Path(cfg.out))  # --out can be published to: exit 2 before any work (again, by staged(), at the end)
    recipe = load_recipe(cfg.recipe) if cfg.recipe is not None else {}
    layout = data_layout(cfg.layout, recipe)
    ray = cfg.ray_settings()
    return BuildSettings(
        model=ModelSpec(cfg.model, cfg.weights, cfg.num_classes, cfg.in_channels, cfg.input_size, cfg.trust_checkpoint),
        data=DataSettings(cfg.calib, cfg.val, cfg.calib_size, cfg.val_size, layout, cfg.seed),
        pre=PreprocessSettings(recipe, cfg.preset, cfg.pre_size, cfg.resize, cfg.mean, cfg.std, cfg.pre_channels, cfg.channel_order),
        export=ExportConfig(opset=cfg.opset, exporter=cfg.exporter),
        plan=PlanSettings(policy, tuple(cfg.keep_fp), cfg.keep_first_last),
        calibrate=CalibrateSettings(cfg.calib_method, cfg.percentile, cfg.batch_size, cfg.threads, cfg.progress, ray),
        validator=validator_settings(cfg, latency, ray),
        engine=engine,
        gates=cfg.gates,
        out=None if cfg.out is None else Path(cfg.out),
        transform=TransformSettings(cfg.equalize, cfg.bias_correction, cfg.batch_size),
    )
