"""``rescompile validate``: a candidate (INT8/FP16 ONNX, TensorRT plan) against an FP32 reference, with gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from rescompile.buildfolder import REPORT_FILES, SIMPLIFIED_ONNX
from rescompile.commands import options as o
from rescompile.commands.base import app, console, warn
from rescompile.commands.groups import OptionGroup

ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference",
        "-r",
        help="FP32 reference: a model spec (demo, resnet20, torchvision:<arch>), an FP32 .onnx, or "
        f"ref.npz saved with --save-reference (default: a build folder's {SIMPLIFIED_ONNX}).",
        rich_help_panel=o.MODEL,
    ),
]


@dataclass(frozen=True)
class ValidateData(OptionGroup):
    val: Annotated[
        str | None,
        typer.Option(
            help="Validation data: image folder, .npz with labels, or demo-val (default: a build folder's own validation "
            "data, the same held-out split or in-sample set; demo-val for the demo model; a saved reference brings its "
            "own; else required).",
            rich_help_panel=o.DATA,
        ),
    ] = None
    val_size: o.ValSizeOpt = None
    layout: o.LayoutOpt = "nchw"
    preset: Annotated[
        str | None,
        typer.Option(
            help="Preprocessing preset (default: the build folder's, else the reference model's own).", rich_help_panel=o.PREPROCESSING
        ),
    ] = None


@dataclass(frozen=True)
class ValidateRun(OptionGroup):
    fp32: Annotated[
        Path | None,
        typer.Option(
            "--fp32",
            help="FP32 ONNX the candidate was quantized from: latency baseline and layerwise reference "
            "(default: the reference when it is ONNX, else an export of the PyTorch reference).",
            rich_help_panel=o.VALIDATION,
        ),
    ] = None
    no_baseline: Annotated[
        bool, typer.Option("--no-baseline", help="Do not time an FP32 baseline (no speedup).", rich_help_panel=o.VALIDATION)
    ] = False
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs before timing.", rich_help_panel=o.VALIDATION)] = 5
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size for the accuracy pass.", rich_help_panel=o.VALIDATION)] = 64
    threads: o.ThreadsOpt = None
    layerwise: o.LayerwiseOpt = False
    layerwise_samples: Annotated[int, typer.Option(min=1, help="Inputs used by --layerwise.", rich_help_panel=o.VALIDATION)] = 64
    cuda_lib: Annotated[
        str, typer.Option(help="TensorRT plans: device buffers from auto | cuda-python | pycuda | torch.", rich_help_panel=o.TENSORRT)
    ] = "auto"


@dataclass(frozen=True)
class ValidateOutput(OptionGroup):
    out: Annotated[Path, typer.Option("--out", "-o", help=f"Folder for {', '.join(REPORT_FILES)}.", rich_help_panel=o.OUTPUT)] = Path(
        "validation"
    )
    save_reference: o.SaveReferenceOpt = None
    quiet: o.QuietOpt = False


@app.command(
    epilog="Examples:\n\n  rescompile validate build/demo/model.int8.onnx --reference demo --min-agreement 98\n\n"
    "  rescompile validate model.int8.onnx --reference model.simplified.onnx --val val.npz --gates gates.yaml --layerwise\n\n"
    "  rescompile validate build/demo/model.int8.onnx --reference demo --save-reference ref.npz\n\n"
    "  rescompile validate model.plan --reference ref.npz --max-top1-drop 0.5   (on the device: no PyTorch needed)",
)
def validate(
    candidate: Annotated[Path, typer.Argument(help="Model under test: INT8/FP16/FP32 .onnx, a TensorRT plan, or a build folder.")],
    reference: ReferenceOpt = None,
    *,
    loading: o.ModelOptions,
    data: ValidateData,
    gates: o.GateOptions,
    latency: o.LatencyOptions,
    run: ValidateRun,
    output: ValidateOutput,
    scale: o.RayOptions,
    checks: o.BuildFolderOptions,
) -> None:
    """Validate a candidate against FP32 on the same inputs: accuracy, agreement, latency, gates, reports.

    A build folder (or a file in one) is checked against its manifest.json first: an artifact
    changed after the build, or a build whose gates failed, is refused (exit 2).

    Exit codes: 0 all gates pass, 1 a gate failed, 2 bad input, 3 a missing dependency (TensorRT for a plan).
    """
    from rescompile.pipeline.check import ValidateRequest, validate_candidate
    from rescompile.report.console import print_summary
    from rescompile.validate.run import ValidateSettings

    resolved = gates.resolve()  # bad gates, layout or Ray options are refused before any work (exit 2)
    settings = ValidateSettings(
        run.batch_size, latency.settings(run.warmup), run.threads, not output.quiet, run.layerwise_samples, scale.settings()
    )
    done = validate_candidate(
        ValidateRequest(
            candidate,
            loading.spec(reference or ""),
            data.val,
            data.val_size,
            data.preset,
            o.check_layout(data.layout),
            run.fp32,
            run.no_baseline,
            output.save_reference,
            gates=resolved,
            settings=settings,
            cuda_lib=run.cuda_lib,
            layerwise=run.layerwise,
            out=output.out,
            no_verify_hashes=checks.no_verify_hashes,
            allow_failed_build=checks.allow_failed_build,
        ),
        warn=warn,
    )
    print_summary(console, done.report, f"rescompile validate: {done.candidate} ({done.report.samples} samples)")
    console.print("wrote " + ", ".join(str(f) for f in done.files), highlight=False)
    error = done.verdict.failure()
    if error is not None:
        raise error
