"""``rescompile validate``: a candidate (INT8/FP16 ONNX, TensorRT plan) against an FP32 reference, with gates."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.commands.base import app, console, run_cli, warn
from rescompile.commands.options import AllowFailedOpt, NoVerifyOpt, RayAddressOpt, RayOpt, ShardsOpt

GATE_HELP = "Gates (exit 1 when missed): flags override --gates."


def _gate(help_text: str, *names: str) -> Any:
    return typer.Option(*names, help=help_text, rich_help_panel=GATE_HELP)


MaxTop1Drop = Annotated[float | None, _gate("Gate: most top-1 points the candidate may lose vs FP32.")]
MinAgreement = Annotated[float | None, _gate("Gate: minimum top-1 agreement with FP32, percent.")]
MinCosine = Annotated[float | None, _gate("Gate: minimum mean logit cosine similarity.")]
MaxP99 = Annotated[float | None, _gate("Gate: maximum candidate p99 latency, ms (at --gate-batch).", "--max-p99-ms")]
MinSpeedup = Annotated[float | None, _gate("Gate: minimum candidate speedup over FP32 (p50, same run, at --gate-batch).")]
GateBatch = Annotated[int | None, typer.Option(min=1, help="Batch size the latency gates read (default: the smallest timed).",
                                               rich_help_panel=GATE_HELP)]
GatesFile = Annotated[Path | None, _gate("YAML recipe of gates, e.g. 'max-top1-drop: 1.0'.", "--gates")]


@app.command(
    epilog="Examples:\n\n  rescompile validate build/demo/model.int8.onnx --reference demo --min-agreement 98\n\n"
    "  rescompile validate model.int8.onnx --reference model.simplified.onnx --val val.npz --gates gates.yaml --layerwise\n\n"
    "  rescompile validate build/demo/model.int8.onnx --reference demo --save-reference ref.npz\n\n"
    "  rescompile validate model.plan --reference ref.npz --max-top1-drop 0.5   (on the device: no PyTorch needed)",
)
def validate(
    candidate: Annotated[Path, typer.Argument(help="Model under test: INT8/FP16/FP32 .onnx, a TensorRT plan, or a build folder.")],
    reference: Annotated[str | None, typer.Option(
        "--reference", "-r", help="FP32 reference: a model spec (demo, resnet20, torchvision:<arch>), an FP32 .onnx, "
        "or ref.npz saved with --save-reference (default: a build folder's model.simplified.onnx).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="Checkpoint for a reference model spec.")] = None,
    num_classes: Annotated[int | None, typer.Option(min=1)] = None,
    in_channels: Annotated[int | None, typer.Option(min=1)] = None,
    input_size: Annotated[int | None, typer.Option(min=8)] = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow unpickling arbitrary objects from --weights.")] = False,
    val: Annotated[str | None, typer.Option(help="Validation data: image folder, .npz with labels, or demo-val "
                                                 "(default: a build folder's own validation data, the same held-out split "
                                                 "or in-sample set; demo-val for the demo model; a saved reference brings "
                                                 "its own; else required).")] = None,
    val_size: Annotated[int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N validation samples.")] = None,
    preset: Annotated[str | None, typer.Option(help="Preprocessing preset (default: the reference model's own).")] = None,
    layout: Annotated[str, typer.Option(help="Layout of .npy/.npz images: nchw | nhwc.")] = "nchw",
    fp32: Annotated[Path | None, typer.Option(
        "--fp32", help="FP32 ONNX the candidate was quantized from: latency baseline and layerwise reference "
        "(default: the reference when it is ONNX, else an export of the PyTorch reference).")] = None,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Do not time an FP32 baseline (no speedup).")] = False,
    save_reference: Annotated[Path | None, typer.Option(
        help="Save inputs, labels and FP32 logits to this .npz for validating elsewhere.")] = None,
    gates_file: GatesFile = None,
    max_top1_drop: MaxTop1Drop = None,
    min_agreement: MinAgreement = None,
    min_cosine: MinCosine = None,
    max_p99_ms: MaxP99 = None,
    min_speedup: MinSpeedup = None,
    gate_batch: GateBatch = None,
    latency_batch: Annotated[list[int] | None, typer.Option(
        "--latency-batch", min=1, help="Batch size to time; repeatable (default: 1 and 32).")] = None,
    latency_runs: Annotated[int | None, typer.Option(
        min=3, help="Exactly N timed runs per batch size and runner (default: a time budget of a fifth of the run).")] = None,
    latency_budget: Annotated[float | None, typer.Option(
        help="Seconds to time each batch size and runner, warm-up included (instead of the default budget).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs before timing.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size for the accuracy pass.")] = 64,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for inference (default: all cores).")] = None,
    cuda_lib: Annotated[str, typer.Option(help="TensorRT plans: device buffers from auto | cuda-python | pycuda | torch.")] = "auto",
    layerwise: Annotated[bool, typer.Option(
        "--layerwise", help="Compare FP32 and INT8 tensor by tensor; blame the layers that add most error.")] = False,
    layerwise_samples: Annotated[int, typer.Option(min=1, help="Inputs used by --layerwise.")] = 64,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for report.json, report.md, junit.xml, report.html.")] = Path("validation"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    no_verify_hashes: NoVerifyOpt = False,
    allow_failed_build: AllowFailedOpt = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Validate a candidate against FP32 on the same inputs: accuracy, agreement, latency, gates, reports.

    A build folder (or a file in one) is checked against its manifest.json first: an artifact
    changed after the build, or a build whose gates failed, is refused (exit 2).

    Exit codes: 0 all gates pass, 1 a gate failed, 2 bad input, 3 a missing dependency (TensorRT for a plan).
    """

    from rescompile.config import Gates
    from rescompile.pipeline.check import Timing, ValidateRequest
    from rescompile.pipeline.settings import ModelSpec

    request = ValidateRequest(
        candidate, ModelSpec(reference or "", weights, num_classes, in_channels, input_size, trust_checkpoint), val, val_size,
        preset, layout, fp32, no_baseline, save_reference, gates_file,
        Gates(max_top1_drop, min_agreement, min_cosine, max_p99_ms, min_speedup, gate_batch),
        Timing(batch_size, tuple(latency_batch or (1, 32)), latency_runs, latency_budget, warmup, threads, not quiet, ray,
               ray_address, shards),
        cuda_lib, layerwise, layerwise_samples, out, no_verify_hashes, allow_failed_build,
    )  # fmt: skip
    run_cli(partial(_validate, request))


def _validate(request: Any) -> None:
    """Run :func:`rescompile.pipeline.check.validate_candidate`, print its summary, raise its gate failure (exit 1)."""
    from rescompile.pipeline.check import validate_candidate
    from rescompile.validate.console import print_summary

    done = validate_candidate(request, warn=warn)
    print_summary(console, done.report.to_dict(), f"rescompile validate: {done.candidate} ({done.report.samples} samples)")
    console.print("wrote " + ", ".join(str(f) for f in done.files), highlight=False)
    error = done.verdict.failure()
    if error is not None:
        raise error
