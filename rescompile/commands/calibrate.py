"""``rescompile calibrate``: ranges.json (and a TensorRT calibration cache) for a simplified ONNX model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rescompile.buildfolder import RANGES
from rescompile.commands import options as o
from rescompile.commands.base import app, checked_path, console, log_to_stderr, warn
from rescompile.commands.groups import OptionGroup
from rescompile.config import CalibrateSettings
from rescompile.quantize.registry import policy_help

if TYPE_CHECKING:
    from rescompile.config import RaySettings


@dataclass(frozen=True)
class CalibrateData(OptionGroup):
    calib: Annotated[str | None, typer.Option(help="Calibration data: image folder, .npy/.npz, or demo-calib.", rich_help_panel=o.DATA)] = (
        None
    )
    calib_size: Annotated[int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N samples.", rich_help_panel=o.DATA)] = (
        None
    )
    seed: Annotated[int, typer.Option(help="Seed of the subset.", rich_help_panel=o.DATA)] = 0
    batch_size: Annotated[int, typer.Option(min=1, help="Images read and preprocessed per batch.", rich_help_panel=o.DATA)] = 64
    layout: o.LayoutOpt = "nchw"


@dataclass(frozen=True)
class CalibrateHow(OptionGroup):
    """How ranges are made: the method, where statistics come from, which tensors, ONNX Runtime threads."""

    method: Annotated[str, typer.Option(help=o.METHOD_HELP, rich_help_panel=o.CALIBRATION)] = "max"
    percentile: o.PercentileOpt = 99.99
    from_stats: Annotated[
        Path | None,
        typer.Option(help="Ranges from saved histograms (calib_stats.npz): no data, no model run.", rich_help_panel=o.CALIBRATION),
    ] = None
    from_trt_cache: Annotated[
        Path | None, typer.Option(help="Import a TensorRT calibration cache as ranges.json.", rich_help_panel=o.CALIBRATION)
    ] = None
    tensors: Annotated[
        str,
        typer.Option(
            help="plan: the tensors the policy quantizes | all: every activation (full TRT cache).", rich_help_panel=o.CALIBRATION
        ),
    ] = "plan"
    policy: Annotated[
        str, typer.Option(help="Placement policy whose tensors to calibrate: " + policy_help(), rich_help_panel=o.CALIBRATION)
    ] = "tensorrt"
    threads: Annotated[
        int | None, typer.Option(min=1, help="ONNX Runtime threads (default: all cores).", rich_help_panel=o.CALIBRATION)
    ] = None

    def settings(self) -> CalibrateSettings:
        """The :class:`rescompile.config.CalibrateSettings`; UsageError (exit 2) for an unknown method or percentile."""
        from rescompile.calibrate.ranges import check_method

        check_method(self.method, self.percentile)
        return CalibrateSettings(self.method, self.percentile)


@dataclass(frozen=True)
class CalibrateOutput(OptionGroup):
    trt_cache: Annotated[
        Path | None, typer.Option(help="Also write a TensorRT calibration cache (implicit INT8, DLA).", rich_help_panel=o.TENSORRT)
    ] = None
    trt_version: Annotated[str, typer.Option(help="TensorRT version written in the cache header.", rich_help_panel=o.TENSORRT)] = "10.3.0"
    trt_algorithm: Annotated[str, typer.Option(help="Algorithm written in the cache header.", rich_help_panel=o.TENSORRT)] = (
        "EntropyCalibration2"
    )
    out: Annotated[Path, typer.Option("--out", "-o", help=f"{RANGES} to write.", rich_help_panel=o.OUTPUT)] = Path(RANGES)
    stats_out: Annotated[
        Path | None, typer.Option("--stats", help="Also write the histograms (.npz) for --from-stats.", rich_help_panel=o.OUTPUT)
    ] = None
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=o.OUTPUT)] = False


@app.command(
    epilog="Examples:\n\n  rescompile calibrate build/demo/model.simplified.onnx --calib demo-calib --method auto "
    "--out ranges.json\n\n  rescompile calibrate model.simplified.onnx --calib data/calib --calib-size 512 "
    "--method entropy --tensors all --trt-cache model.cache --trt-version 10.3.0\n\n"
    "  rescompile calibrate model.simplified.onnx --from-stats build/x/calib_stats.npz --method mse --out ranges.json",
)
def calibrate(
    model: Annotated[Path, typer.Argument(help="The simplified FP32 ONNX model (BatchNorm folded), e.g. build/x/model.simplified.onnx")],
    *,
    data: CalibrateData,
    preprocess: o.PreprocessOptions,
    how: CalibrateHow,
    output: CalibrateOutput,
    scale: o.RayOptions,
    checks: o.BuildFolderOptions,
) -> None:
    """Collect activation statistics in one ONNX Runtime pass and write ranges by a calibration method.

    Every method (max, percentile, entropy, mse, auto) comes from the same statistics: save them
    with --stats and switch method later with --from-stats, without running the model again.
    """
    from rescompile.calibrate.cache import load_stats
    from rescompile.calibrate.ranges import CalibrationResult, calibration_result
    from rescompile.calibrate.trt_cache import read_cache, to_trt_cache, version_code
    from rescompile.errors import UsageError
    from rescompile.io import write_bytes_atomic, write_text_atomic

    how.settings()  # an unknown method or percentile: exit 2 before any work
    version_code(output.trt_version)
    ray = scale.settings()
    log_to_stderr(output.quiet)
    sources = [s for s in (data.calib, how.from_stats, how.from_trt_cache) if s is not None]
    if len(sources) != 1:
        raise UsageError("give exactly one of --calib, --from-stats, --from-trt-cache")
    model = checked_path(model, **checks.overrides())[0]  # build folders' files: checked against their manifests
    if how.from_stats is not None:
        how = replace(how, from_stats=checked_path(how.from_stats, **checks.overrides())[0])
    stats_bytes = None
    if how.from_trt_cache is not None:
        ranges, code, algo = read_cache(how.from_trt_cache)
        result = CalibrationResult(ranges, "trt-cache", 0, params={"trt_version": code, "trt_algorithm": algo})
        told = f"imported {len(ranges)} tensors from {how.from_trt_cache} (TRT-{code}-{algo})"
    elif how.from_stats is not None:
        stats, key, samples, sample = load_stats(how.from_stats)
        result = calibration_result(stats, how.method, samples, percentile=how.percentile, key=key, sample=sample)
        told = f"{len(stats)} tensors from {how.from_stats} ({samples} samples), no model run"
    else:
        result, stats_bytes, told = _collect(model, data, how, preprocess, output.quiet, ray)
    write_text_atomic(output.out, result.to_json())
    console.print(f"wrote {output.out}: {told}; method {result.method}", highlight=False)
    if how.method == "auto" and result.summary:
        from collections import Counter

        chosen = Counter(r.method for r in result.ranges.values())
        console.print("auto chose: " + ", ".join(f"{m} {n}" for m, n in sorted(chosen.items())), highlight=False)
    if output.stats_out is not None:
        if stats_bytes is None:
            raise UsageError("--stats needs --calib (statistics are collected from data)")
        write_bytes_atomic(output.stats_out, stats_bytes)
        console.print(f"wrote {output.stats_out}", highlight=False)
    if output.trt_cache is not None:
        write_text_atomic(output.trt_cache, to_trt_cache(result.ranges, version=output.trt_version, algorithm=output.trt_algorithm))
        console.print(
            f"wrote {output.trt_cache} (TRT-{version_code(output.trt_version)}-{output.trt_algorithm}, scale = amax/127)", highlight=False
        )


def _collect(
    model_path: Path, data: CalibrateData, how: CalibrateHow, pre_opts: o.PreprocessOptions, quiet: bool, scale: RaySettings | None = None
) -> tuple[Any, bytes, str]:
    """Statistics and ranges of ``model_path`` on ``--calib``: the build's preprocessing and calibrate stage
    (:func:`rescompile.pipeline.stages.preprocessing`, :func:`rescompile.pipeline.stages.calibrate_tensors`)."""
    from rescompile.calibrate.collect import CollectSettings, activation_tensors
    from rescompile.data.layout import data_layout
    from rescompile.data.preprocess import load_recipe
    from rescompile.data.sources import check_shape, open_source
    from rescompile.errors import UsageError
    from rescompile.models.onnx_source import describe_onnx
    from rescompile.pipeline import stages
    from rescompile.pipeline.settings import CalibrateStage
    from rescompile.readers import read_onnx

    layout = o.check_layout(data.layout)
    if how.tensors not in ("plan", "all"):
        raise UsageError(f"--tensors must be plan or all, not {how.tensors!r}")
    info = describe_onnx(model_path, require_residual=False)
    onnx_model = read_onnx(model_path)
    if any(n.op_type == "BatchNormalization" for n in onnx_model.graph.node):
        raise UsageError(
            f"{model_path} still has BatchNormalization nodes; calibrate the simplified model",
            hint=f"rescompile simplify {model_path} --out model.simplified.onnx",
        )
    pre_settings = pre_opts.settings()
    recipe = load_recipe(pre_settings.recipe) if pre_settings.recipe is not None else {}
    pre = stages.preprocessing(info.preset, info.input_shape, pre_settings, recipe)
    src = open_source(data.calib or "", layout=data_layout(layout, recipe), limit=data.calib_size, seed=data.seed)
    check_shape(src, pre, info.input_shape)
    if how.tensors == "all":
        names = activation_tensors(onnx_model)
    else:
        from rescompile.config import PlanSettings
        from rescompile.quantize.registry import parse_policy

        plan = stages.plan(onnx_model, PlanSettings(parse_policy(how.policy, "onnxruntime").name)).plan
        names = plan.calibrated_tensors
    settings = CalibrateStage(how.settings(), CollectSettings(data.batch_size, threads=how.threads), not quiet, scale)
    run = stages.calibrate_tensors(onnx_model, names, src, pre, settings)
    for w in run.warnings:  # the one place they are shown (a build shows them in its summary and report)
        warn(f"{w.message} ({w.code})")
    where = "" if scale is None else f" on {scale.where()}"
    return run.result, run.stats_npz, f"{len(names)} tensors, {src.count} samples of {src.name}{where} in {run.seconds:.1f} s"
