"""``rescompile calibrate``: ranges.json (and a TensorRT calibration cache) for a simplified ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.cli import (
    CalibMethodOpt,
    ChannelOrderOpt,
    ChannelsOpt,
    MeanOpt,
    PercentileOpt,
    RayAddressOpt,
    RayOpt,
    RecipeOpt,
    ResizeOpt,
    ShardsOpt,
    SizeOpt,
    StdOpt,
    app,
    console,
    floats_opt,
    log_to_stderr,
    run_cli,
)  # fmt: skip
from rescompile.quantize.registry import policy_help


@app.command(
    epilog="Examples:\n\n  rescompile calibrate build/demo/model.simplified.onnx --calib demo-calib --method auto "
    "--out ranges.json\n\n  rescompile calibrate model.simplified.onnx --calib data/calib --calib-size 512 "
    "--method entropy --tensors all --trt-cache model.cache --trt-version 10.3.0\n\n"
    "  rescompile calibrate model.simplified.onnx --from-stats build/x/calib_stats.npz --method mse --out ranges.json",
)
def calibrate(
    model: Annotated[Path, typer.Argument(help="The simplified FP32 ONNX model (BatchNorm folded), e.g. build/x/model.simplified.onnx")],
    calib: Annotated[str | None, typer.Option(help="Calibration data: image folder, .npy/.npz, or demo-calib.")] = None,
    method: CalibMethodOpt = "max",
    percentile: PercentileOpt = 99.99,
    out: Annotated[Path, typer.Option("--out", "-o", help="ranges.json to write.")] = Path("ranges.json"),
    stats_out: Annotated[Path | None, typer.Option("--stats", help="Also write the histograms (.npz) for --from-stats.")] = None,
    from_stats: Annotated[Path | None, typer.Option(help="Ranges from saved histograms (calib_stats.npz): no data, no model run.")] = None,
    from_trt_cache: Annotated[Path | None, typer.Option(help="Import a TensorRT calibration cache as ranges.json.")] = None,
    trt_cache: Annotated[Path | None, typer.Option(help="Also write a TensorRT calibration cache (implicit INT8, DLA).")] = None,
    trt_version: Annotated[str, typer.Option(help="TensorRT version written in the cache header.")] = "10.3.0",
    trt_algorithm: Annotated[str, typer.Option(help="Algorithm written in the cache header.")] = "EntropyCalibration2",
    tensors: Annotated[str, typer.Option(help="plan: the tensors the policy quantizes | all: every activation (full TRT cache).")] = "plan",
    policy: Annotated[str, typer.Option(help="Placement policy whose tensors to calibrate: " + policy_help())] = "tensorrt",
    calib_size: Annotated[int | None, typer.Option(min=1, help="Use a seeded, stratified subset of N samples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images read and preprocessed per batch.")] = 64,
    preset: Annotated[str | None, typer.Option(help="imagenet | cifar | grayscale | fashion-mnist (default: by input shape).")] = None,
    layout: Annotated[str, typer.Option(help="Layout of .npy/.npz images: nchw | nhwc.")] = "nchw",
    recipe: RecipeOpt = None,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    channels: ChannelsOpt = None,
    channel_order: ChannelOrderOpt = None,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    shards: ShardsOpt = None,
) -> None:
    """Collect activation statistics in one ONNX Runtime pass and write ranges by a calibration method.

    Every method (max, percentile, entropy, mse, auto) comes from the same statistics: save them
    with --stats and switch method later with --from-stats, without running the model again.
    """
    from rescompile.calibrate.cache import load_stats
    from rescompile.calibrate.ranges import CalibrationResult, calibration_result, check_method
    from rescompile.calibrate.trt_cache import read_cache, to_trt_cache, version_code
    from rescompile.errors import UsageError
    from rescompile.io import write_bytes_atomic, write_text_atomic

    def go() -> Any:
        from rescompile.scale.cluster import ray_settings

        check_method(method, percentile)
        version_code(trt_version)
        scale = ray_settings(ray, ray_address, shards)
        log_to_stderr(quiet)
        sources = [s for s in (calib, from_stats, from_trt_cache) if s is not None]
        if len(sources) != 1:
            raise UsageError("give exactly one of --calib, --from-stats, --from-trt-cache")
        stats_bytes = None
        if from_trt_cache is not None:
            ranges, code, algo = read_cache(from_trt_cache)
            result = CalibrationResult(ranges, "trt-cache", 0, params={"trt_version": code, "trt_algorithm": algo})
            how = f"imported {len(ranges)} tensors from {from_trt_cache} (TRT-{code}-{algo})"
        elif from_stats is not None:
            stats, key, samples, sample = load_stats(from_stats)
            result = calibration_result(stats, method, samples, percentile=percentile, key=key, sample=sample)
            how = f"{len(stats)} tensors from {from_stats} ({samples} samples), no model run"
        else:
            result, stats_bytes, how = _collect(model, calib or "", method, percentile, tensors, policy, calib_size,
                                                seed, batch_size, preset, layout, recipe, size, resize, mean, std,
                                                channels, channel_order, threads, quiet, scale)  # fmt: skip
        write_text_atomic(out, result.to_json())
        console.print(f"wrote {out}: {how}; method {result.method}", highlight=False)
        if method == "auto" and result.summary:
            from collections import Counter

            chosen = Counter(r.method for r in result.ranges.values())
            console.print("auto chose: " + ", ".join(f"{m} {n}" for m, n in sorted(chosen.items())), highlight=False)
        if stats_out is not None:
            if stats_bytes is None:
                raise UsageError("--stats needs --calib (statistics are collected from data)")
            write_bytes_atomic(stats_out, stats_bytes)
            console.print(f"wrote {stats_out}", highlight=False)
        if trt_cache is not None:
            write_text_atomic(trt_cache, to_trt_cache(result.ranges, version=trt_version, algorithm=trt_algorithm))
            console.print(f"wrote {trt_cache} (TRT-{version_code(trt_version)}-{trt_algorithm}, scale = amax/127)",
                          highlight=False)  # fmt: skip

    run_cli(go)


def _collect(model_path: Path, calib: str, method: str, percentile: float, tensors: str, policy: str,
             calib_size: int | None, seed: int, batch_size: int, preset: str | None, layout: str,
             recipe: Path | None, size: int | None, resize: int | None, mean: str | None, std: str | None,
             channels: int | None, channel_order: str | None, threads: int | None,
             quiet: bool, scale: Any = None) -> tuple[Any, bytes, str]:  # fmt: skip
    from rescompile.calibrate.collect import activation_tensors
    from rescompile.calibrate.run import calibrate as run_calibration
    from rescompile.data.layout import check_layout, data_layout
    from rescompile.data.preprocess import load_recipe, resolve_preprocess
    from rescompile.data.sources import check_shape, open_source
    from rescompile.errors import UsageError
    from rescompile.models.onnx_source import describe_onnx, read_onnx
    from rescompile.progress import progress

    check_layout(layout, "--layout")
    if tensors not in ("plan", "all"):
        raise UsageError(f"--tensors must be plan or all, not {tensors!r}")
    info = describe_onnx(model_path, require_residual=False)
    onnx_model = read_onnx(model_path)
    if any(n.op_type == "BatchNormalization" for n in onnx_model.graph.node):
        raise UsageError(f"{model_path} still has BatchNormalization nodes; calibrate the simplified model",
                         hint=f"rescompile simplify {model_path} --out model.simplified.onnx")  # fmt: skip
    rec = load_recipe(recipe) if recipe is not None else {}
    pre = resolve_preprocess(info.preset, info.input_shape, preset=preset, recipe=rec, size=size, resize=resize,
                             mean=floats_opt(mean, "--mean"), std=floats_opt(std, "--std"), channels=channels,
                             channel_order=channel_order)  # fmt: skip
    src = open_source(calib, layout=data_layout(layout, rec), limit=calib_size, seed=seed)
    check_shape(src, pre, info.input_shape)
    if tensors == "all":
        names = activation_tensors(onnx_model)
    else:
        from rescompile.quantize import plan_qdq
        from rescompile.quantize.registry import parse_policy

        names = plan_qdq(onnx_model, parse_policy(policy, "onnxruntime").name).calibrated_tensors
    with progress("calibrate", src.count, not quiet) as advance:
        run = run_calibration(onnx_model, names, src, pre, method=method, percentile=percentile, batch_size=batch_size,
                              threads=threads, on_batch=advance, ray=scale)  # fmt: skip
    where = "" if scale is None else f" on {scale.where()}"
    return run.result, run.stats_npz, f"{len(names)} tensors, {src.count} samples of {src.name}{where} in {run.seconds:.1f} s"
