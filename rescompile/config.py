"""Typed build configuration: every user choice in one frozen value, recorded in the manifest.

The pipeline splits it into each stage's own settings (:mod:`rescompile.pipeline.settings`); no stage,
the validator or the gates read the whole of it. The small values it is made of live here too (``Gates``,
``RaySettings``: where shards run), so the layers below the pipeline can take them without importing what runs them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
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


@dataclass(frozen=True)
class BuildConfig:
    model: str = "demo"
    weights: Path | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: int | None = None
    trust_checkpoint: bool = False
    out: Path | None = None  # default build/<model name>
    calib: str = "demo-calib"
    val: str | None = None  # None: demo-val for the demo model, else a held-out split of calib (rescompile.data.holdout)
    calib_size: int | None = None
    val_size: int | None = None
    layout: str = "nchw"
    preset: str | None = None  # default: the model's own preset
    calib_method: str = "max"  # max | percentile | entropy | mse | auto
    percentile: float = 99.99  # for calib_method percentile (and auto's percentile candidate)
    recipe: Path | None = None  # YAML preprocessing recipe (preset, size, resize, mean, std, channels, ...)
    pre_size: int | None = None  # custom preprocessing: final (crop) size [default: the model's input]
    resize: int | None = None  # custom preprocessing: shorter side before the center crop
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pre_channels: int | None = None  # 1 grayscale, 3 colour [default: the model's input]
    channel_order: str | None = None  # rgb | bgr
    policy: str = "tensorrt"
    backend: str = "onnxruntime"  # onnxruntime | tensorrt (adds the engine stage)
    target: str = "gpu"  # TensorRT target profile (rescompile.engine.targets); used with backend "tensorrt"
    keep_fp: tuple[str, ...] = ()
    keep_first_last: bool = False
    opset: int = 17
    exporter: str = "torchscript"
    batch_size: int = 64
    latency_batches: tuple[int, ...] = (1, 32)
    latency_runs: int | None = None  # exactly this many timed runs per batch size [default: a time budget, see latency.py]
    latency_warmup: int = 5
    latency_budget_s: float | None = None  # seconds per batch size and runner, warm-up included, instead of the default
    layerwise: bool = False  # compare FP32 and INT8 tensor by tensor, blame layers (report["layerwise"])
    auto_fallback: int = 0  # keep up to N units in FP until the accuracy gates pass (0 = off; docs/fallback.md)
    fallback_unit: str = "auto"  # auto | layer | block: what one fallback step keeps in FP
    fallback_rank_samples: int = 300  # the ranking subset: samples of the ranking split where INT8 differs most
    equalize: bool = False  # cross-layer equalization + bias absorption before planning (docs/equalize.md)
    bias_correction: bool = False  # correct each quantized layer's mean output shift on calibration data (docs/equalize.md)
    save_reference: Path | None = None  # write inputs, labels and FP32 logits to this .npz
    threads: int | None = None
    seed: int = 0
    gates: Gates = field(default_factory=Gates)
    progress: bool = False
    # Where the work runs, not what is built: left out of to_dict (the manifest and a sweep's config key).
    ray: bool = False  # calibration and validation shards on a local Ray started in-process
    ray_address: str | None = None  # ... or on the Ray cluster at this address
    ray_shards: int | None = None  # shards per data set (default: one per CPU of the cluster)

    def ray_settings(self) -> RaySettings | None:
        """The :class:`RaySettings` of ``ray``/``ray_address``/``ray_shards``, or None."""
        if not self.ray and self.ray_address is None and self.ray_shards is None:
            return None
        return ray_settings(self.ray, self.ray_address, self.ray_shards)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = list(v)
        for k in ("progress", "ray", "ray_address", "ray_shards"):
            d.pop(k)
        for k in OFF_UNLESS_ASKED:  # recorded only when on: a build without them keeps its manifest (and sweep key) bytes
            if not d[k]:
                d.pop(k)
        if not self.auto_fallback:  # the search's options mean nothing without it (and keep a sweep's key unchanged)
            for k in ("fallback_unit", "fallback_rank_samples"):
                d.pop(k)
        return d
