"""Options shared by several commands, defined once: ``Annotated`` types with their help panel, and groups.

A command takes an option either as one parameter typed with an alias below (``threads: ThreadsOpt = None``)
or a whole group as one parameter (``scale: RayOptions``, see ``rescompile.commands.groups``). Each group returns
its stage's own settings (``ModelOptions.spec(model) -> ModelSpec``, ``LatencyOptions.settings() -> LatencySettings``,
``RayOptions.settings() -> RaySettings``: Polygraphy's ``BaseArgs.parse_impl``), the values ``BuildConfig`` nests,
and refuses bad values with a UsageError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rescompile.commands.groups import OptionGroup
from rescompile.config import CalibrateSettings, ExportConfig, Gates, LatencySettings, ModelSpec, PreprocessSettings

if TYPE_CHECKING:
    from rescompile.config import RaySettings

# Help panels, in the order `rescompile build --help` shows them.
MODEL = "Model"
DATA = "Data"
PREPROCESSING = "Preprocessing"
CALIBRATION = "Calibration"
QUANTIZATION = "Quantization"
VALIDATION = "Validation and gates"
TENSORRT = "TensorRT"
OUTPUT = "Output"
RAY = "Scale-out (Ray)"
BUILD_FOLDER = "Build folder checks"

# ---- Model
ModelArg = Annotated[
    str,
    typer.Argument(help="demo | resnet20..resnet110 | torchvision:<arch> | model.onnx | TorchScript file", show_default=True),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", "-w", help="Checkpoint (state_dict, or a dict with 'state_dict'/'model').", rich_help_panel=MODEL),
]
NumClassesOpt = Annotated[int | None, typer.Option(min=1, help="Classes of the model's head.", rich_help_panel=MODEL)]
InChannelsOpt = Annotated[int | None, typer.Option(min=1, help="Input channels of the model.", rich_help_panel=MODEL)]
InputSizeOpt = Annotated[int | None, typer.Option(min=8, help="Input height = width.", rich_help_panel=MODEL)]
TrustCheckpointOpt = Annotated[
    bool, typer.Option(help="Allow unpickling objects from --weights (trusted files only).", rich_help_panel=MODEL)
]
ExporterOpt = Annotated[str, typer.Option(help="torch.onnx exporter: torchscript | dynamo.", rich_help_panel=MODEL)]
OpsetOpt = Annotated[int, typer.Option(min=17, help="ONNX opset.", rich_help_panel=MODEL)]

# ---- Data
CalibOpt = Annotated[str, typer.Option(help="Calibration data: image folder, .npy/.npz, or demo-calib.", rich_help_panel=DATA)]
CalibSizeOpt = Annotated[
    int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N calibration samples.", rich_help_panel=DATA)
]
ValSizeOpt = Annotated[
    int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N validation samples.", rich_help_panel=DATA)
]
LayoutOpt = Annotated[str, typer.Option(help="Layout of .npy/.npz images: nchw | nhwc.", rich_help_panel=DATA)]

# ---- Preprocessing (build and calibrate; docs/inputs.md)
PresetOpt = Annotated[
    str | None,
    typer.Option(
        help="imagenet | cifar | grayscale | fashion-mnist (default: the model's own, else by input shape).", rich_help_panel=PREPROCESSING
    ),
]
RecipeOpt = Annotated[
    Path | None,
    typer.Option(
        help="YAML preprocessing recipe: preset, size, resize, mean, std, channels, channel_order, layout.", rich_help_panel=PREPROCESSING
    ),
]
SizeOpt = Annotated[
    int | None, typer.Option("--size", min=1, help="Custom preprocessing: final (center-crop) size.", rich_help_panel=PREPROCESSING)
]
ResizeOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Custom preprocessing: resize the shorter side to this before the crop.", rich_help_panel=PREPROCESSING),
]
MeanOpt = Annotated[
    str | None,
    typer.Option(help="Custom preprocessing: per-channel mean of [0,1] pixels, e.g. 0.485,0.456,0.406.", rich_help_panel=PREPROCESSING),
]
StdOpt = Annotated[
    str | None, typer.Option(help="Custom preprocessing: per-channel std, e.g. 0.229,0.224,0.225.", rich_help_panel=PREPROCESSING)
]
ChannelsOpt = Annotated[
    int | None, typer.Option("--channels", help="Custom preprocessing: 1 (grayscale) or 3 (colour).", rich_help_panel=PREPROCESSING)
]
ChannelOrderOpt = Annotated[
    str | None, typer.Option(help="Custom preprocessing: channel order of the model input, rgb | bgr.", rich_help_panel=PREPROCESSING)
]

# ---- Calibration
METHOD_HELP = "Calibration method: max | percentile | entropy | mse | auto (per tensor, the least error)."
CalibMethodOpt = Annotated[str, typer.Option(help=METHOD_HELP, rich_help_panel=CALIBRATION)]
PercentileOpt = Annotated[float, typer.Option(help="Percentile of |x| kept by the percentile method.", rich_help_panel=CALIBRATION)]

# ---- Quantization
KeepFpOpt = Annotated[
    list[str] | None, typer.Option("--keep-fp", help="Keep nodes (name glob or op type) in FP; repeatable.", rich_help_panel=QUANTIZATION)
]
KeepFirstLastOpt = Annotated[bool, typer.Option(help="Keep the first and last weighted layers in FP.", rich_help_panel=QUANTIZATION)]
EqualizeOpt = Annotated[
    bool,
    typer.Option(
        "--equalize",
        help="Cross-layer equalization (Nagel et al. 2019) of Conv->ReLU->Conv pairs and of norm affine (GroupNorm gamma/beta)"
        "->ReLU->Conv(s) pairs, and bias absorption, before quantizing; "
        "function-preserving, parity-checked on the calibration inputs (docs/equalize.md).",
        rich_help_panel=QUANTIZATION,
    ),
]
BiasCorrectionOpt = Annotated[
    bool,
    typer.Option(
        "--bias-correction",
        help="Correct each quantized Conv/Gemm's per-channel output mean shift, measured on the calibration inputs "
        "(never the validation data); writes bias_correction.json (docs/equalize.md).",
        rich_help_panel=QUANTIZATION,
    ),
]

# ---- Validation and gates (build and validate: "exit 1 when a gate is missed; flags override --gates")
MaxTop1DropOpt = Annotated[
    float | None,
    typer.Option(help="Gate: fail (exit 1) if FP32 minus INT8 (candidate) top-1 exceeds N points.", rich_help_panel=VALIDATION),
]
MinAgreementOpt = Annotated[
    float | None, typer.Option(help="Gate: minimum top-1 agreement with FP32, percent.", rich_help_panel=VALIDATION)
]
MinCosineOpt = Annotated[float | None, typer.Option(help="Gate: minimum mean logit cosine similarity.", rich_help_panel=VALIDATION)]
MaxP99Opt = Annotated[
    float | None,
    typer.Option("--max-p99-ms", help="Gate: maximum INT8 (candidate) p99 latency, ms (at --gate-batch).", rich_help_panel=VALIDATION),
]
MinSpeedupOpt = Annotated[
    float | None,
    typer.Option(help="Gate: minimum INT8 (candidate) speedup over FP32 (p50, same run, at --gate-batch).", rich_help_panel=VALIDATION),
]
MaxClassDropOpt = Annotated[
    float | None,
    typer.Option(
        help="Gate: fail (exit 1) if a class's FP32 minus INT8 top-1 exceeds N points (needs labels).", rich_help_panel=VALIDATION
    ),
]
GateModeOpt = Annotated[
    str | None,
    typer.Option(
        "--gate-mode",
        help="How accuracy gates judge: point (the estimate passes; the default) | confident (its whole 95% interval must pass).",
        rich_help_panel=VALIDATION,
    ),
]
NoDefaultGatesOpt = Annotated[
    bool,
    typer.Option(
        "--no-default-gates",
        help="Without an accuracy gate, skip the default floor (cosine, margin-aware agreement, top-1 drop; docs/gates.md).",
        rich_help_panel=VALIDATION,
    ),
]
GateBatchOpt = Annotated[
    int | None, typer.Option(min=1, help="Batch size the latency gates read (default: the smallest timed).", rich_help_panel=VALIDATION)
]
GatesFileOpt = Annotated[
    Path | None,
    typer.Option("--gates", help="YAML recipe of gates, e.g. 'max-top1-drop: 1.0'; flags override it.", rich_help_panel=VALIDATION),
]
LayerwiseOpt = Annotated[
    bool,
    typer.Option(
        "--layerwise", help="Compare FP32 and INT8 tensor by tensor; blame the layers that add most error.", rich_help_panel=VALIDATION
    ),
]
LatencyBatchOpt = Annotated[
    list[int] | None,
    typer.Option("--latency-batch", min=1, help="Batch size to time; repeatable (default: 1 and 32).", rich_help_panel=VALIDATION),
]
LatencyRunsOpt = Annotated[
    int | None,
    typer.Option(min=3, help="Exactly N timed runs per batch size and runner (default: a time budget).", rich_help_panel=VALIDATION),
]
LatencyBudgetOpt = Annotated[
    float | None,
    typer.Option(
        help="Seconds to time each batch size and runner, warm-up included (instead of the default budget).", rich_help_panel=VALIDATION
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads for inference (default: all cores).", rich_help_panel=VALIDATION)]
SaveReferenceOpt = Annotated[
    Path | None, typer.Option(help="Save inputs, labels and FP32 logits to this .npz (for validating elsewhere).", rich_help_panel=OUTPUT)
]

# ---- Output
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.", rich_help_panel=OUTPUT)]

# ---- Scale-out on Ray (the optional extra [ray]; docs/scale.md)
RayOpt = Annotated[
    bool, typer.Option("--ray", help="Run data shards as tasks on a local Ray started here (extra [ray]).", rich_help_panel=RAY)
]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Run data shards on the Ray cluster at this address.", rich_help_panel=RAY)
]
ShardsOpt = Annotated[
    int | None, typer.Option("--shards", min=1, help="Shards per data set with --ray (default: one per CPU).", rich_help_panel=RAY)
]

# ---- Reading a build folder (validate, inspect, engine, compare): integrity overrides, off by default
NoVerifyOpt = Annotated[
    bool,
    typer.Option(
        "--no-verify-hashes",
        help="Use a build folder's artifacts without checking their sha256 against manifest.json "
        "(for a model edited by hand; a warning, and recorded in the report).",
        rich_help_panel=BUILD_FOLDER,
    ),
]
AllowFailedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-failed-build",
        help="Accept a build whose gates failed (e.g. <out>.failed/); a warning, and recorded in the report.",
        rich_help_panel=BUILD_FOLDER,
    ),
]


def floats_opt(value: str | None, flag: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``; a UsageError names ``flag`` when a value is not a number."""
    if value is None:
        return None
    from rescompile.errors import UsageError

    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"{flag} takes numbers separated by commas, e.g. 0.485,0.456,0.406 (got {value!r})") from None


def check_layout(layout: str) -> str:
    """``layout`` if it is nchw or nhwc; else a UsageError (exit 2): :func:`rescompile.data.layout.check_layout`."""
    from rescompile.data.layout import check_layout as check

    return check(layout, "--layout")


@dataclass(frozen=True)
class ModelOptions(OptionGroup):
    """How a model spec is loaded (build, export, validate's reference)."""

    weights: WeightsOpt = None
    num_classes: NumClassesOpt = None
    in_channels: InChannelsOpt = None
    input_size: InputSizeOpt = None
    trust_checkpoint: TrustCheckpointOpt = False

    def spec(self, model: str) -> ModelSpec:
        """The :class:`rescompile.config.ModelSpec` of ``model`` loaded with these options."""
        return ModelSpec(model, self.weights, self.num_classes, self.in_channels, self.input_size, self.trust_checkpoint)


@dataclass(frozen=True)
class ExportOptions(OptionGroup):
    """PyTorch -> ONNX export (build, export)."""

    exporter: ExporterOpt = "torchscript"
    opset: OpsetOpt = 17

    def settings(self) -> ExportConfig:
        return ExportConfig(opset=self.opset, exporter=self.exporter)


@dataclass(frozen=True)
class PreprocessOptions(OptionGroup):
    """Preprocessing: a preset, a YAML recipe, or custom values (build, calibrate; docs/inputs.md)."""

    preset: PresetOpt = None
    recipe: RecipeOpt = None
    size: SizeOpt = None
    resize: ResizeOpt = None
    mean: MeanOpt = None
    std: StdOpt = None
    channels: ChannelsOpt = None
    channel_order: ChannelOrderOpt = None

    def settings(self) -> PreprocessSettings:
        """The :class:`rescompile.config.PreprocessSettings`; a UsageError names --mean/--std when a value is not a number."""
        mean, std = floats_opt(self.mean, "--mean"), floats_opt(self.std, "--std")
        return PreprocessSettings(self.recipe, self.preset, self.size, self.resize, mean, std, self.channels, self.channel_order)


@dataclass(frozen=True)
class CalibrationOptions(OptionGroup):
    """The calibration method (build)."""

    calib_method: CalibMethodOpt = "max"
    percentile: PercentileOpt = 99.99

    def settings(self) -> CalibrateSettings:
        """The :class:`rescompile.config.CalibrateSettings`; UsageError (exit 2) for an unknown method or a percentile
        outside (0, 100]."""
        from rescompile.calibrate.ranges import check_method

        check_method(self.calib_method, self.percentile)
        return CalibrateSettings(self.calib_method, self.percentile)


@dataclass(frozen=True)
class GateOptions(OptionGroup):
    """Gates (exit 1 when one is missed); flags override the --gates recipe (build, validate)."""

    max_top1_drop: MaxTop1DropOpt = None
    min_agreement: MinAgreementOpt = None
    min_cosine: MinCosineOpt = None
    max_class_drop: MaxClassDropOpt = None
    max_p99_ms: MaxP99Opt = None
    min_speedup: MinSpeedupOpt = None
    gate_batch: GateBatchOpt = None
    gate_mode: GateModeOpt = None
    no_default_gates: NoDefaultGatesOpt = False
    gates_file: GatesFileOpt = None

    def resolve(self) -> Gates:
        """The :class:`rescompile.config.Gates`: the recipe overridden by the flags; UsageError for bad thresholds."""
        from rescompile.validate.gates import resolve_gates

        flags = Gates(
            max_top1_drop=self.max_top1_drop,
            min_agreement=self.min_agreement,
            min_cosine=self.min_cosine,
            max_p99_ms=self.max_p99_ms,
            min_speedup=self.min_speedup,
            latency_batch=self.gate_batch,
            max_class_drop=self.max_class_drop,
            mode=self.gate_mode,
            default_floor=False if self.no_default_gates else None,
        )
        return resolve_gates(self.gates_file, flags)


@dataclass(frozen=True)
class LatencyOptions(OptionGroup):
    """What the latency measurement times (build, validate)."""

    latency_batch: LatencyBatchOpt = None
    latency_runs: LatencyRunsOpt = None
    latency_budget: LatencyBudgetOpt = None

    def settings(self, warmup: int = 5) -> LatencySettings:
        """The :class:`rescompile.config.LatencySettings` (checked against the gates by the pipeline)."""
        return LatencySettings(tuple(self.latency_batch or (1, 32)), warmup, self.latency_runs, self.latency_budget)


@dataclass(frozen=True)
class RayOptions(OptionGroup):
    """Data shards on Ray (build, calibrate, validate; docs/scale.md)."""

    ray: RayOpt = False
    ray_address: RayAddressOpt = None
    shards: ShardsOpt = None

    def settings(self) -> RaySettings | None:
        """The :class:`rescompile.config.RaySettings`, or None without Ray; UsageError for bad values."""
        from rescompile.config import ray_settings

        return ray_settings(self.ray, self.ray_address, self.shards)


@dataclass(frozen=True)
class BuildFolderOptions(OptionGroup):
    """Integrity overrides for reading a build folder (validate, engine)."""

    no_verify_hashes: NoVerifyOpt = False
    allow_failed_build: AllowFailedOpt = False

    def overrides(self) -> dict[str, bool]:
        """The keyword arguments of ``open_build_checked`` and ``checked_path``."""
        return {"no_verify_hashes": self.no_verify_hashes, "allow_failed_build": self.allow_failed_build}
