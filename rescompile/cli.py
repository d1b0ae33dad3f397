"""The ``rescompile`` command: parse options, call the library, map errors to exit codes.

Exit codes: 0 success, 1 a gate (or parity/verification check) failed, 2 bad input or
usage, 3 a missing dependency, 4 an internal error (a bug: traceback, please report);
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from rescompile.errors import RescompileError, Terminated
from rescompile.quantize.registry import policy_help

app = typer.Typer(
    name="rescompile",
    help="Compile trained ResNets to INT8 that keeps the skip-add topology: ONNX -> Q/DQ -> TensorRT / ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelArg = Annotated[
    str,
    typer.Argument(help="demo | resnet20..resnet110 | torchvision:<arch> | model.onnx | TorchScript file",
                   show_default=True),
]  # fmt: skip
WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", help="Checkpoint (state_dict, or a dict with 'state_dict'/'model').")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: build/<model>).")]
# Reading a build folder (validate, inspect, engine, compare): integrity overrides, off by default.
NoVerifyOpt = Annotated[bool, typer.Option(
    "--no-verify-hashes", help="Use a build folder's artifacts without checking their sha256 against manifest.json "
    "(for a model edited by hand; a warning, and recorded in the report).")]  # fmt: skip
AllowFailedOpt = Annotated[bool, typer.Option(
    "--allow-failed-build",
    help="Accept a build whose gates failed (e.g. <out>.failed/); a warning, and recorded in the report.")]  # fmt: skip
# Calibration and custom preprocessing (shared by build and calibrate).
CalibMethodOpt = Annotated[
    str, typer.Option(help="Calibration method: max | percentile | entropy | mse | auto (per tensor, the least error).")
]
PercentileOpt = Annotated[float, typer.Option(help="Percentile of |x| kept by --calib-method percentile.")]
RecipeOpt = Annotated[
    Path | None, typer.Option(help="YAML preprocessing recipe: preset, size, resize, mean, std, channels, channel_order, layout.")
]
SizeOpt = Annotated[int | None, typer.Option("--size", min=1, help="Custom preprocessing: final (center-crop) size.")]
ResizeOpt = Annotated[int | None, typer.Option(min=1, help="Custom preprocessing: resize the shorter side to this before the crop.")]
MeanOpt = Annotated[str | None, typer.Option(help="Custom preprocessing: per-channel mean of [0,1] pixels, e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[str | None, typer.Option(help="Custom preprocessing: per-channel std, e.g. 0.229,0.224,0.225.")]
ChannelsOpt = Annotated[int | None, typer.Option("--channels", help="Custom preprocessing: 1 (grayscale) or 3 (colour).")]
ChannelOrderOpt = Annotated[str | None, typer.Option(help="Custom preprocessing: channel order of the model input, rgb | bgr.")]
# Scale-out on Ray (the optional extra [ray]; docs/scale.md), shared by build, calibrate and validate.
RayOpt = Annotated[bool, typer.Option("--ray", help="Run data shards as tasks on a local Ray started here (extra [ray]).")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Run data shards on the Ray cluster at this address.")]
ShardsOpt = Annotated[int | None, typer.Option("--shards", min=1, help="Shards per data set with --ray (default: one per CPU).")]


def floats_opt(value: str | None, flag: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``; a UsageError names ``flag`` when a value is not a number."""
    if value is None:
        return None
    from rescompile.errors import UsageError

    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"{flag} takes numbers separated by commas, e.g. 0.485,0.456,0.406 (got {value!r})") from None


def log_to_stderr(quiet: bool) -> None:
    """Show rescompile's INFO messages (e.g. "reusing calibration ranges") on stderr unless ``quiet``."""
    import logging

    logger = logging.getLogger("rescompile")
    if quiet or any(getattr(h, "_rescompile", False) for h in logger.handlers):
        return

    class _ToStderr(logging.Handler):  # resolves stderr at each message (it may be swapped, e.g. by tests)
        _rescompile = True

        def emit(self, record: logging.LogRecord) -> None:
            err_console.print(self.format(record), highlight=False, markup=False, soft_wrap=True)

    handler = _ToStderr()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated (like Ctrl-C raises KeyboardInterrupt), so it cleans up."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def warn(line: str) -> None:
    """A one-line warning on stderr."""
    err_console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def open_build_checked(path: Path, *, no_verify_hashes: bool = False, allow_failed_build: bool = False) -> Any:
    """``rescompile.buildfolder.open_build`` for a command: the overrides in effect are printed as warnings."""
    from rescompile.buildfolder import open_build

    build = open_build(path, verify=not no_verify_hashes, allow_failed=allow_failed_build)
    for line in build.warnings():
        warn(line)
    return build


def checked_path(path: Path, *, no_verify_hashes: bool = False, allow_failed_build: bool = False) -> tuple[Path, Any]:
    """``(path, build)``: a file given on the command line, checked against its build's manifest when it is in one."""
    from rescompile.buildfolder import build_of

    build = build_of(path, verify=not no_verify_hashes, allow_failed=allow_failed_build)
    if build is None:
        return path, None
    for line in build.warnings():
        warn(line)
    return build.file(path.name), build


def run_cli(fn: Any) -> Any:
    """Call ``fn``; turn rescompile errors into one-line messages and exit codes.

    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal number, as shells report a process killed by it),
    after the build's staging folder is removed.
    """
    try:
        with _sigterm_raises():
            return fn()
    except RescompileError as exc:
        # escape: messages and hints hold brackets ("pip install 'rescompile[tensorrt]'") that are not markup
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, markup=True, soft_wrap=True)
        if exc.hint:
            err_console.print(f"[dim]hint: {escape(exc.hint)}[/]", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Terminated:
        err_console.print("terminated")
        raise typer.Exit(143) from None
    except Exception:
        if os.environ.get("RESCOMPILE_DEBUG"):
            raise
        import traceback

        traceback.print_exc()
        err_console.print("[bold red]internal error[/] (a bug in rescompile): please report it with the traceback above.")
        raise typer.Exit(4) from None


def _summary(result: Any) -> None:
    from rescompile.validate.console import print_summary

    r = result.report
    kind = "in-sample " if (r.get("validation") or {}).get("in_sample") else ""
    print_summary(console, r, f"rescompile build: {r['model']['name']} ({r['samples']} {kind}validation samples)")
    console.print(f"artifacts: {result.out}/ (model.int8.onnx, report.json, report.md, junit.xml, report.html, "
                  "manifest.json)", highlight=False)  # fmt: skip


@app.command(
    epilog="Examples:\n\n  rescompile build\n\n  rescompile build torchvision:resnet50 --weights ckpt.pth "
    "--calib data/calib --val data/val --max-top1-drop 0.5 --out build/resnet50",
)
def build(
    model: ModelArg = "demo",
    weights: WeightsOpt = None,
    out: OutOpt = None,
    calib: Annotated[str, typer.Option(help="Calibration data: image folder, .npy/.npz, or demo-calib.")] = "demo-calib",
    val: Annotated[str | None, typer.Option(
        help="Validation data: image folder (class subfolders), .npz with labels, or demo-val. Default: demo-val for the "
        "demo model; else a seeded held-out 20% of --calib (>= 256 samples, not used for calibration), or, for a smaller "
        "--calib, the calibration inputs themselves (in-sample, label-free).")] = None,
    calib_size: Annotated[int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N calibration samples.")] = None,
    val_size: Annotated[int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N validation samples.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the held-out split and of the --calib-size/--val-size subsets.")] = 0,
    calib_method: CalibMethodOpt = "max",
    percentile: PercentileOpt = 99.99,
    policy: Annotated[str, typer.Option(help="Q/DQ placement policy: " + policy_help("the --backend's"))] = "tensorrt",
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt (also builds model.plan; needs TensorRT, a GPU).")] = "onnxruntime",
    target: Annotated[str, typer.Option(help="TensorRT target profile for --backend tensorrt (rescompile targets).")] = "gpu",
    keep_fp: Annotated[list[str] | None, typer.Option("--keep-fp", help="Keep nodes (name glob or op type) in FP; repeatable.")] = None,
    keep_first_last: Annotated[bool, typer.Option(help="Keep the first and last weighted layers in FP.")] = False,
    preset: Annotated[str | None, typer.Option(help="imagenet | cifar | grayscale | fashion-mnist (default: the model's own).")] = None,
    layout: Annotated[str, typer.Option(help="Layout of .npy/.npz images: nchw | nhwc.")] = "nchw",
    recipe: RecipeOpt = None,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    channels: ChannelsOpt = None,
    channel_order: ChannelOrderOpt = None,
    num_classes: Annotated[int | None, typer.Option(min=1, help="Classes of the model's head.")] = None,
    in_channels: Annotated[int | None, typer.Option(min=1, help="Input channels of the model.")] = None,
    input_size: Annotated[int | None, typer.Option(min=8, help="Input height = width.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow unpickling objects from --weights (trusted files only).")] = False,
    exporter: Annotated[str, typer.Option(help="torch.onnx exporter: torchscript | dynamo.")] = "torchscript",
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset.")] = 17,
    max_top1_drop: Annotated[float | None, typer.Option(help="Gate: fail (exit 1) if FP32 minus INT8 top-1 exceeds N points.")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Gate: minimum top-1 agreement with FP32, percent.")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Gate: minimum mean logit cosine similarity.")] = None,
    max_p99_ms: Annotated[float | None, typer.Option("--max-p99-ms", help="Gate: maximum INT8 p99 latency, ms (at --gate-batch).")] = None,
    min_speedup: Annotated[float | None, typer.Option(help="Gate: minimum INT8 speedup over FP32 (p50, at --gate-batch).")] = None,
    gate_batch: Annotated[int | None, typer.Option(min=1, help="Batch size the latency gates read (default: the smallest timed).")] = None,
    gates_file: Annotated[Path | None, typer.Option("--gates", help="YAML recipe of gates; flags override it.")] = None,
    layerwise: Annotated[bool, typer.Option("--layerwise", help="Compare FP32 and INT8 tensor by tensor; blame layers.")] = False,
    auto_fallback: Annotated[int, typer.Option(min=0, help="Keep up to N worst layers in FP until the accuracy gates pass.")] = 0,
    save_reference: Annotated[Path | None, typer.Option(help="Save inputs, labels and FP32 logits to this .npz.")] = None,
    latency_batch: Annotated[list[int] | None, typer.Option("--latency-batch", min=1, help="Batch size to time (default: 1, 32).")] = None,
    latency_budget: Annotated[float | None, typer.Option(help="Seconds per batch size and runner, warm-up included.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for inference (default: all cores).")] = None,
    latency_runs: Annotated[int | None, typer.Option(min=3, help="Exactly N timed runs per batch size (default: a time budget).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Build an INT8 model end to end: load, export, simplify, calibrate, quantize, verify, validate.

    With no arguments, builds the embedded demo (ResNet-20 trained on Fashion-MNIST).
    """
    from rescompile.config import BuildConfig, Gates
    from rescompile.data.layout import check_layout
    from rescompile.pipeline import build as run_build

    def go() -> Any:
        from rescompile.calibrate.ranges import check_method
        from rescompile.validate.gates import resolve_gates

        check_layout(layout, "--layout")
        check_method(calib_method, percentile)
        log_to_stderr(quiet)
        cfg = BuildConfig(
            model=model, weights=weights, out=out, calib=calib, val=val, calib_size=calib_size, val_size=val_size, seed=seed,
            calib_method=calib_method, policy=policy, backend=backend, target=target, keep_fp=tuple(keep_fp or ()),
            keep_first_last=keep_first_last,
            preset=preset, layout=layout, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
            trust_checkpoint=trust_checkpoint, exporter=exporter, opset=opset, threads=threads,
            latency_runs=latency_runs, latency_batches=tuple(latency_batch or (1, 32)), latency_budget_s=latency_budget,
            gates=resolve_gates(gates_file, Gates(max_top1_drop, min_agreement, min_cosine, max_p99_ms, min_speedup, gate_batch)),
            layerwise=layerwise, auto_fallback=auto_fallback, save_reference=save_reference,
            progress=not quiet, percentile=percentile, recipe=recipe, pre_size=size, resize=resize,
            mean=floats_opt(mean, "--mean"), std=floats_opt(std, "--std"), pre_channels=channels, channel_order=channel_order,
            ray=ray, ray_address=ray_address, ray_shards=shards,
        )  # fmt: skip
        cfg.ray_settings()  # a bad --ray-address/--shards is refused before any work
        try:  # run_build checks gates and options before any work (exit 2)
            return run_build(cfg)
        except RescompileError as exc:
            result = getattr(exc, "result", None)
            if result is not None:
                _summary(result)
            raise

    _summary(run_cli(go))


@app.command()
def version() -> None:
    """Print the versions of rescompile and its runtimes."""
    from rescompile.pipeline import versions

    for k, v in versions().items():
        console.print(f"{k} {v}", highlight=False)


# Each module of rescompile.commands registers its own command(s) on ``app``.
import rescompile.commands  # noqa: E402, F401


def main() -> None:
    app(prog_name="rescompile")


if __name__ == "__main__":
    main()
