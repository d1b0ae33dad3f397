"""``rescompile build``: the option groups' settings nested in one :class:`rescompile.config.BuildConfig`, run by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.commands import options as o
from rescompile.commands.base import app, console, log_to_stderr, show_failed_result
from rescompile.commands.groups import OptionGroup
from rescompile.config import AutoFallback, BackendSettings, BuildConfig, DataSettings, PlanSettings, TransformSettings
from rescompile.quantize.registry import policy_help

VAL_HELP = (
    "Validation data: image folder (class subfolders), .npz with labels, or demo-val. Default: demo-val for the "
    "demo model; else a seeded held-out 20% of --calib (>= 256 samples, not used for calibration), or, for a "
    "smaller --calib, the calibration inputs themselves (in-sample, label-free)."
)


@dataclass(frozen=True)
class BuildData(OptionGroup):
    calib: o.CalibOpt = "demo-calib"
    val: Annotated[str | None, typer.Option(help=VAL_HELP, rich_help_panel=o.DATA)] = None
    calib_size: o.CalibSizeOpt = None
    val_size: o.ValSizeOpt = None
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the held-out split and of the --calib-size/--val-size subsets.", rich_help_panel=o.DATA)
    ] = 0
    layout: o.LayoutOpt = "nchw"

    def settings(self) -> DataSettings:
        return DataSettings(self.calib, self.val, self.calib_size, self.val_size, o.check_layout(self.layout), self.seed)


@dataclass(frozen=True)
class BuildQuantization(OptionGroup):
    policy: Annotated[
        str, typer.Option(help="Q/DQ placement policy: " + policy_help("the --backend's"), rich_help_panel=o.QUANTIZATION)
    ] = "tensorrt"
    keep_fp: o.KeepFpOpt = None
    keep_first_last: o.KeepFirstLastOpt = False
    auto_fallback: Annotated[
        int,
        typer.Option(
            min=0,
            help="Keep up to N units in FP, ranked on ONNX Runtime, until the accuracy gates pass on a held-out gate split "
            "(docs/fallback.md).",
            rich_help_panel=o.QUANTIZATION,
        ),
    ] = 0
    fallback_unit: Annotated[
        str,
        typer.Option(
            help="What one --auto-fallback step keeps in FP: layer, block (a residual block's main branch and its Add), "
            "or auto (a layer, or its whole block where the layer alone would break a residual fusion).",
            rich_help_panel=o.QUANTIZATION,
        ),
    ] = "auto"
    fallback_rank_samples: Annotated[
        int,
        typer.Option(
            min=1, help="--auto-fallback ranks on this many samples where INT8 and FP32 differ most.", rich_help_panel=o.QUANTIZATION
        ),
    ] = 300
    equalize: o.EqualizeOpt = False
    bias_correction: o.BiasCorrectionOpt = False

    def plan(self) -> PlanSettings:
        return PlanSettings(self.policy, tuple(self.keep_fp or ()), self.keep_first_last)

    def transform(self) -> TransformSettings:
        return TransformSettings(self.equalize, self.bias_correction)

    def fallback(self) -> AutoFallback:
        return AutoFallback(self.auto_fallback, self.fallback_unit, self.fallback_rank_samples)


@dataclass(frozen=True)
class BuildValidation(OptionGroup):
    layerwise: o.LayerwiseOpt = False
    threads: o.ThreadsOpt = None


@dataclass(frozen=True)
class BuildEngine(OptionGroup):
    backend: Annotated[
        str, typer.Option(help="onnxruntime | tensorrt (also builds model.plan; needs TensorRT, a GPU).", rich_help_panel=o.TENSORRT)
    ] = "onnxruntime"
    target: Annotated[
        str, typer.Option(help="TensorRT target profile for --backend tensorrt (rescompile targets).", rich_help_panel=o.TENSORRT)
    ] = "gpu"

    def settings(self) -> BackendSettings:
        return BackendSettings(self.backend, self.target)


@dataclass(frozen=True)
class BuildOutput(OptionGroup):
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: build/<model>).", rich_help_panel=o.OUTPUT)] = (
        None
    )
    save_reference: o.SaveReferenceOpt = None
    quiet: o.QuietOpt = False


def _summary(result: Any) -> None:
    from rescompile.buildfolder import INT8_ONNX, MANIFEST, REPORT_FILES
    from rescompile.report.console import print_summary
    from rescompile.validate.results import section_dict

    r = result.typed
    kind = "in-sample " if section_dict(r.validation).get("in_sample") else ""
    print_summary(console, r, f"rescompile build: {r.model.name} ({r.samples} {kind}validation samples)")
    console.print(f"artifacts: {result.out}/ ({', '.join((INT8_ONNX, *REPORT_FILES, MANIFEST))})", highlight=False)


@app.command(
    epilog="Examples:\n\n  rescompile build\n\n  rescompile build torchvision:resnet50 --weights ckpt.pth "
    "--calib data/calib --val data/val --max-top1-drop 0.5 --out build/resnet50",
)
def build(
    model: o.ModelArg = "demo",
    *,
    loading: o.ModelOptions,
    onnx_export: o.ExportOptions,
    data: BuildData,
    preprocess: o.PreprocessOptions,
    calibration: o.CalibrationOptions,
    quantization: BuildQuantization,
    gates: o.GateOptions,
    latency: o.LatencyOptions,
    validation: BuildValidation,
    engine: BuildEngine,
    output: BuildOutput,
    scale: o.RayOptions,
) -> None:
    """Build an INT8 model end to end: load, export, simplify, calibrate, quantize, verify, validate.

    With no arguments, builds the embedded demo (ResNet-20 trained on Fashion-MNIST).
    """
    from rescompile.pipeline import build as run_build

    cfg = BuildConfig(  # each group's own settings; bad values are refused here or by the pipeline, before any work (exit 2)
        model=loading.spec(model),
        export=onnx_export.settings(),
        data=data.settings(),
        pre=preprocess.settings(),
        calibrate=calibration.settings(),
        plan=quantization.plan(),
        transform=quantization.transform(),
        fallback=quantization.fallback(),
        latency=latency.settings(),
        gates=gates.resolve(),
        backend=engine.settings(),
        out=output.out,
        threads=validation.threads,
        layerwise=validation.layerwise,
        save_reference=output.save_reference,
        progress=not output.quiet,
        ray=scale.settings(),
    )
    log_to_stderr(output.quiet)
    with show_failed_result(_summary):  # a build whose gates failed still shows its summary (exit 1)
        result = run_build(cfg)  # checks gates and options before any work (exit 2)
    _summary(result)
