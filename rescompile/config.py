"""Typed build configuration: every user choice, one frozen settings value per option group, recorded in the manifest.

Each option group of the CLI (:mod:`rescompile.commands.options`) returns one of the settings below, and
:class:`BuildConfig` nests them; a stage takes its own (:mod:`rescompile.pipeline.settings`), never the whole.
The manifest, a sweep's grid and ``rescompile.build(**kwargs)`` name the settings by their flat keys
(``calib_method``, ``latency_batches``, ...): :data:`FLAT` maps each to its place, once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any

from rescompile.errors import UsageError


@dataclass(frozen=True)
class Gates:
    """Validation gates; None disables a gate."""

    max_top1_drop: float | None = None  # percentage points, FP32 top-1 minus INT8 top-1
    min_agreement: float | None = None  # percent
    min_cosine: float | None = None
    max_p99_ms: float | None = None  # candidate p99 latency at ``latency_batch``
    min_speedup: float | None = None  # FP32 p50 / candidate p50 at ``latency_batch``, same run
    latency_batch: int | None = None  # batch size the latency gates read [default: the smallest measured]
    max_class_drop: float | None = None  # percentage points, the worst class's FP32 minus INT8 top-1
    mode: str | None = None  # "point" (None) | "confident": pass on the point estimate, or only on a safe interval
    default_floor: bool | None = None  # False: no default floor when no accuracy gate is set (--no-default-gates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


OFF_UNLESS_ASKED = ("equalize", "bias_correction")
MIN_RUNS = 3  # timed latency runs at least (a percentile of fewer is noise)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (:func:`rescompile.models.load_model`)."""

    spec: str = "demo"
    weights: Path | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: int | None = None
    trust_checkpoint: bool = False

    def load_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``load_model`` besides the spec."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}


@dataclass(frozen=True)
class ExportConfig:
    """PyTorch -> ONNX export (:func:`rescompile.export.export_onnx`)."""

    opset: int = 17
    exporter: str = "torchscript"  # "torchscript" (fast) or "dynamo" (torch.export based)
    atol: float = 1e-4
    rtol: float = 1e-3
    parity_batch: int = 4
    seed: int = 0


@dataclass(frozen=True)
class DataSettings:
    """Where the calibration and validation data come from (:func:`rescompile.data.holdout.choose_data`)."""

    calib: str = "demo-calib"
    val: str | None = None  # None: demo-val for the demo model, else a held-out split of calib (rescompile.data.holdout)
    calib_size: int | None = None
    val_size: int | None = None
    layout: str = "nchw"
    seed: int = 0  # the held-out split's, the subsets' and auto-fallback's ranking/gate split's


@dataclass(frozen=True)
class PreprocessSettings:
    """The preprocessing asked for: a preset, a YAML recipe, then custom values (docs/inputs.md)."""

    recipe: Path | None = None  # YAML preprocessing recipe (preset, size, resize, mean, std, channels, ...)
    preset: str | None = None  # default: the model's own preset
    size: int | None = None  # final (crop) size [default: the model's input]
    resize: int | None = None  # shorter side before the center crop
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None  # 1 grayscale, 3 colour [default: the model's input]
    channel_order: str | None = None  # rgb | bgr


@dataclass(frozen=True)
class CalibrateSettings:
    """The calibration method (:func:`rescompile.calibrate.ranges.calibration_result`)."""

    method: str = "max"  # max | percentile | entropy | mse | auto
    percentile: float = 99.99  # for method percentile (and auto's percentile candidate)


@dataclass(frozen=True)
class PlanSettings:
    """Placement: the policy (``auto``: the backend's) and the layers kept in floating point."""

    policy: str = "tensorrt"
    keep_fp: tuple[str, ...] = ()
    keep_first_last: bool = False


@dataclass(frozen=True)
class TransformSettings:
    """Function-preserving rewrites of the float model and the INT8 one's bias correction (docs/equalize.md)."""

    equalize: bool = False  # cross-layer equalization + bias absorption before planning
    bias_correction: bool = False  # correct each quantized layer's mean output shift on calibration data


@dataclass(frozen=True)
class AutoFallback:
    """Auto-fallback (docs/fallback.md): keep up to ``limit`` units in FP until the accuracy gates pass (0: off)."""

    limit: int = 0
    unit: str = "auto"  # auto | layer | block: what one step keeps in FP
    rank_samples: int = 300  # the ranking subset: samples of the ranking split where INT8 differs most


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: ``warmup`` untimed calls, then timed calls by :attr:`mode` (:mod:`rescompile.validate.latency`)."""

    batches: tuple[int, ...] = (1, 32)
    warmup: int = 5
    runs: int | None = None  # explicit: exactly this many timed runs per batch size and runner
    budget_s: float | None = None  # explicit: seconds per batch size and runner, warm-up included
    brief: bool = False  # auto only: the smallest batch size, one warm-up, MIN_RUNS runs
    required: tuple[int, ...] = ()  # batch sizes timed whatever the budget (a latency gate reads them)

    @property
    def mode(self) -> str:
        return "runs" if self.runs is not None else "budget" if self.budget_s is not None else "auto"

    def check(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"latency batch sizes must be >= 1, got {list(self.batches)}")
        if self.warmup < 0:
            raise UsageError(f"warm-up runs must be >= 0, got {self.warmup}")
        if self.runs is not None and self.runs < MIN_RUNS:
            raise UsageError(f"timed runs must be >= {MIN_RUNS}, got {self.runs}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise UsageError(f"the latency time budget must be > 0 seconds, got {self.budget_s}")
        if self.runs is not None and self.budget_s is not None:
            raise UsageError("give --latency-runs or --latency-budget, not both")


@dataclass(frozen=True)
class BackendSettings:
    """What runs the INT8 model: ``onnxruntime``, or ``tensorrt`` (adds the engine stage for ``target``)."""

    backend: str = "onnxruntime"
    target: str = "gpu"  # TensorRT target profile (rescompile.engine.targets); used with backend "tensorrt"


# Each flat key of the manifest, a sweep's grid and ``rescompile.build(**kwargs)``: (group of BuildConfig, its field);
# group "" is a field of BuildConfig itself. The order is the manifest's (written with sorted keys anyway).
FLAT: dict[str, tuple[str, str]] = {
    "model": ("model", "spec"),
    "weights": ("model", "weights"),
    "num_classes": ("model", "num_classes"),
    "in_channels": ("model", "in_channels"),
    "input_size": ("model", "input_size"),
    "trust_checkpoint": ("model", "trust_checkpoint"),
    "out": ("", "out"),
    "calib": ("data", "calib"),
    "val": ("data", "val"),
    "calib_size": ("data", "calib_size"),
    "val_size": ("data", "val_size"),
    "layout": ("data", "layout"),
    "preset": ("pre", "preset"),
    "calib_method": ("calibrate", "method"),
    "percentile": ("calibrate", "percentile"),
    "recipe": ("pre", "recipe"),
    "pre_size": ("pre", "size"),
    "resize": ("pre", "resize"),
    "mean": ("pre", "mean"),
    "std": ("pre", "std"),
    "pre_channels": ("pre", "channels"),
    "channel_order": ("pre", "channel_order"),
    "policy": ("plan", "policy"),
    "backend": ("backend", "backend"),
    "target": ("backend", "target"),
    "keep_fp": ("plan", "keep_fp"),
    "keep_first_last": ("plan", "keep_first_last"),
    "opset": ("export", "opset"),
    "exporter": ("export", "exporter"),
    "batch_size": ("", "batch_size"),
    "latency_batches": ("latency", "batches"),
    "latency_runs": ("latency", "runs"),
    "latency_warmup": ("latency", "warmup"),
    "latency_budget_s": ("latency", "budget_s"),
    "layerwise": ("", "layerwise"),
    "auto_fallback": ("fallback", "limit"),
    "fallback_unit": ("fallback", "unit"),
    "fallback_rank_samples": ("fallback", "rank_samples"),
    "equalize": ("transform", "equalize"),
    "bias_correction": ("transform", "bias_correction"),
    "save_reference": ("", "save_reference"),
    "threads": ("", "threads"),
    "seed": ("data", "seed"),
    "gates": ("", "gates"),
    "progress": ("", "progress"),
}
RAY_KEYS = ("ray", "ray_address", "ray_shards")  # flat keys of ``BuildConfig.ray`` (how a build runs: never in to_dict)
NOT_RECORDED = ("progress",)  # how a build runs, not what it is: left out of to_dict (the manifest and a sweep's key)


@dataclass(frozen=True)
class BuildConfig:
    """Every choice of a build, one settings value per option group.

    Build one from the groups, or from flat keys (``BuildConfig.from_flat(model="resnet20", calib_method="mse")``);
    ``cfg.replace(...)`` takes flat keys and groups alike.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    export: ExportConfig = field(default_factory=ExportConfig)
    data: DataSettings = field(default_factory=DataSettings)
    pre: PreprocessSettings = field(default_factory=PreprocessSettings)
    calibrate: CalibrateSettings = field(default_factory=CalibrateSettings)
    plan: PlanSettings = field(default_factory=PlanSettings)
    transform: TransformSettings = field(default_factory=TransformSettings)
    fallback: AutoFallback = field(default_factory=AutoFallback)
    latency: LatencySettings = field(default_factory=LatencySettings)
    gates: Gates = field(default_factory=Gates)
    backend: BackendSettings = field(default_factory=BackendSettings)
    out: Path | None = None  # default build/<model name>
    batch_size: int = 64  # calibration, equalize, bias correction and the accuracy pass
    threads: int | None = None  # CPU threads of every ONNX Runtime session (default: all cores)
    layerwise: bool = False  # compare FP32 and INT8 tensor by tensor, blame layers (report["layerwise"])
    save_reference: Path | None = None  # write inputs, labels and FP32 logits to this .npz
    progress: bool = False
    ray: RaySettings | None = None  # calibration and validation shards on Ray (how a build runs: not in to_dict)

    @classmethod
    def from_flat(cls, **values: Any) -> BuildConfig:
        """A config from flat keys (:data:`FLAT`, ``ray``/``ray_address``/``ray_shards``) and groups.

        Raises:
            TypeError: an unknown key.
            UsageError: a bad Ray option (``--shards`` without Ray, an empty address).
        """
        return cls().replace(**values)

    def replace(self, **values: Any) -> BuildConfig:
        """A copy with ``values`` replaced: a flat key, a whole group by its name (``model=ModelSpec(...)``), or Ray's keys.

        Raises:
            TypeError: an unknown key.
            UsageError: a bad Ray option.
        """
        groups: dict[str, Any] = {}
        ray = {k: values.pop(k) for k in RAY_KEYS if k in values and not (k == "ray" and _is_ray_group(values[k]))}
        for key, value in values.items():
            current = getattr(self, key, None)
            if key == "ray" or (is_dataclass(current) and isinstance(value, type(current))):
                groups[key] = value  # a whole group
            elif key in FLAT:
                group, name = FLAT[key]
                if group:
                    groups[group] = _replace(groups.get(group, getattr(self, group)), **{name: value})
                else:
                    groups[name] = value
            else:
                raise TypeError(f"BuildConfig has no setting {key!r}")
        if ray:
            now = self.ray
            groups["ray"] = ray_settings(
                ray.get("ray", now is not None and now.address is None),
                ray.get("ray_address", None if now is None else now.address),
                ray.get("ray_shards", None if now is None else now.shards),
            )
        return _replace(self, **groups)

    def flat(self, key: str) -> Any:
        """The value of a flat key (:data:`FLAT`)."""
        group, name = FLAT[key]
        return getattr(getattr(self, group) if group else self, name)

    def to_dict(self) -> dict[str, Any]:
        """The flat record of the manifest and a sweep's key (how the build runs left out; options that are off unless asked
        for recorded only when on, so a build without them keeps its manifest and sweep key)."""
        d: dict[str, Any] = {}
        for key in FLAT:
            v = self.flat(key)
            d[key] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v.to_dict() if isinstance(v, Gates) else v
        for k in NOT_RECORDED:
            d.pop(k)
        for k in OFF_UNLESS_ASKED:
            if not d[k]:
                d.pop(k)
        if not self.fallback.limit:  # the search's options mean nothing without it (and keep a sweep's key unchanged)
            for k in ("fallback_unit", "fallback_rank_samples"):
                d.pop(k)
        return d


def _is_ray_group(value: Any) -> bool:
    return value is None or not isinstance(value, bool)
