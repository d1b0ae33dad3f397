"""``rescompile engine`` (Q/DQ ONNX -> TensorRT plan for a target) and ``rescompile targets``.

Without TensorRT (or without a GPU) ``engine`` exits 3 and prints the trtexec command that
builds the same engine on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rescompile.buildfolder import PLAN
from rescompile.commands import options as o
from rescompile.commands.base import app, checked_path, console, open_build_checked
from rescompile.commands.groups import OptionGroup


def _device_commands(onnx_path: Path, dest: Path, target_name: str, options: Any) -> list[str]:
    """The trtexec command(s) for the target's TensorRT (both majors for a desktop target).

    For DLA on TensorRT 10 (implicit INT8) also writes the plain ONNX and the calibration
    cache that the command reads (``model.dla.onnx``, ``model.dla.calib``).
    """
    from rescompile.calibrate.ranges import TensorRange
    from rescompile.calibrate.trt_cache import to_trt_cache
    from rescompile.engine.implicit import strip_qdq
    from rescompile.engine.mixed import type_rest_fp16
    from rescompile.engine.settings import compute_settings, format_command, input_spec, parse_version, trtexec_command, types_rest_fp16
    from rescompile.engine.targets import get_target
    from rescompile.io import save_onnx, write_text_atomic
    from rescompile.readers import read_onnx

    target = get_target(target_name)
    model = read_onnx(onnx_path)
    spec = input_spec(model)
    versions: list[str] = [target.tensorrt_version] if target.tensorrt_version else ["10.0", "11.0"]
    lines = []
    written: set[Path] = set()
    for v in versions:
        version = parse_version(v)
        settings = compute_settings(target, spec, options, version)
        onnx_arg, calib = str(onnx_path), None
        if settings.dla_mode == "implicit":
            implicit = strip_qdq(model)
            dla_onnx, calib_path = dest / "model.dla.onnx", dest / "model.dla.calib"
            save_onnx(dla_onnx, implicit.model)
            ranges = {t: TensorRange(a, -a, a, "qdq") for t, a in implicit.ranges.items()}
            write_text_atomic(calib_path, to_trt_cache(ranges, version=str(version)))
            onnx_arg, calib = str(dla_onnx), str(calib_path)
            lines.append(
                f"# DLA on TensorRT {version.major} is implicit INT8: wrote {dla_onnx} and {calib_path} "
                f"(ranges of {len(implicit.ranges)} tensors); copy them to the device"
            )
        elif types_rest_fp16(settings.rest_precision, settings.dla_mode, version):
            typed_onnx = dest / "model.engine.onnx"
            if typed_onnx not in written:
                typing = type_rest_fp16(model)
                save_onnx(typed_onnx, typing.model)
                written.add(typed_onnx)
                lines.append(
                    f"# --rest-precision fp16: wrote {typed_onnx} ({len(typing.fp16)} non-quantized nodes typed FP16; "
                    f"{Path(onnx_path).name} unchanged); copy it to the device"
                )
            onnx_arg = str(typed_onnx)
        cmd = trtexec_command(settings, target, onnx_arg, str(dest / PLAN), dynamic=spec.batch is None, calib_cache=calib)
        label = f"# TensorRT {version.major}.x" + (f" (JetPack {target.jetpack})" if target.jetpack else "")
        lines += [label, format_command(cmd)]
    return lines


@dataclass(frozen=True)
class EngineBuild(OptionGroup):
    """How TensorRT builds the engine (the profile, limits and the device)."""

    workspace_mib: Annotated[
        int | None, typer.Option(min=1, help="Builder workspace limit in MiB (default: the target's).", rich_help_panel=o.TENSORRT)
    ] = None
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core, with GPU fallback.", rich_help_panel=o.TENSORRT)] = (
        None
    )
    batch: Annotated[str, typer.Option(help="Batch sizes to support, e.g. 1,8,32: min/max of the profile.", rich_help_panel=o.TENSORRT)] = (
        "1"
    )
    opt_batch: Annotated[
        int | None, typer.Option(min=1, help="Batch TensorRT tunes for (default: the median listed).", rich_help_panel=o.TENSORRT)
    ] = None
    optimization_level: Annotated[
        int, typer.Option(min=0, max=5, help="TensorRT builder optimization level.", rich_help_panel=o.TENSORRT)
    ] = 3
    timing_cache: Annotated[
        Path | None, typer.Option(help="Folder for timing caches (keyed by TensorRT version and GPU).", rich_help_panel=o.TENSORRT)
    ] = None
    device: Annotated[int, typer.Option(min=0, help="CUDA device to build on (the sidecar names it).", rich_help_panel=o.TENSORRT)] = 0
    rest_precision: Annotated[
        str,
        typer.Option(
            help="Precision of the layers left unquantized: fp16 (typed FP16 in the engine's copy of the ONNX; "
            "Softmax/normalization/reductions stay FP32) or fp32.",
            rich_help_panel=o.TENSORRT,
        ),
    ] = "fp16"


@app.command(
    epilog="Examples:\n\n  rescompile engine build/demo/model.int8.onnx --target jetson-orin-nx --batch 1,8,32 "
    "--out build/demo/orin-nx\n\n  rescompile engine model.int8.onnx --target jetson-agx-orin --dla-core 0 --batch 1"
    "\n\n  rescompile engine model.int8.onnx --target jetson-orin-nx --adopt model.plan   (a plan the printed trtexec line built)",
)
def engine(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.int8.onnx", help="The Q/DQ INT8 ONNX to build, or a build folder.")],
    target: Annotated[str, typer.Option(help="Target profile (rescompile targets), or sm_XY, or gpu.", rich_help_panel=o.TENSORRT)] = "gpu",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: beside the ONNX).", rich_help_panel=o.OUTPUT)
    ] = None,
    allow_unfused: Annotated[
        bool, typer.Option(help="Do not fail (exit 1) when a residual Add is not fused into an INT8 layer.", rich_help_panel=o.VALIDATION)
    ] = False,
    verbose: Annotated[bool, typer.Option(help="TensorRT's verbose log.", rich_help_panel=o.OUTPUT)] = False,
    adopt: Annotated[
        Path | None,
        typer.Option(
            metavar="MODEL.plan",
            help="Do not build: adopt a plan built on this device by the printed trtexec line (same options), "
            "writing its sidecar and running the fusion/DLA checks.",
            rich_help_panel=o.TENSORRT,
        ),
    ] = None,
    *,
    builder: EngineBuild,
    checks: o.BuildFolderOptions,
) -> None:
    """Build a TensorRT engine (model.plan + model.plan.json sidecar) from a Q/DQ INT8 ONNX.

    A build folder's model.int8.onnx (or an ONNX in a build folder) is checked against its
    manifest.json first; a changed file, or a build whose gates failed, is refused (exit 2).

    Build on the target device: engines only run on the GPU model and TensorRT version that built them.

    Without TensorRT (or a GPU) it prints the equivalent trtexec command and exits 3.
    """
    from rescompile.engine.settings import EngineOptions, check_rest_precision, parse_batches
    from rescompile.engine.targets import get_target
    from rescompile.errors import MissingDependency

    model_path = _model_path(onnx_path, checks)
    tgt = get_target(target)
    dest = out if out is not None else model_path.parent
    options = EngineOptions(
        builder.workspace_mib,
        builder.dla_core,
        parse_batches(builder.batch),
        builder.opt_batch,
        builder.optimization_level,
        check_rest_precision(builder.rest_precision),
    )
    if adopt is not None:
        from rescompile.engine.tensorrt import adopt_plan

        try:
            result = adopt_plan(model_path, adopt, tgt, options, device_index=builder.device, verbose=verbose)
        except MissingDependency as exc:
            raise MissingDependency(
                f"--adopt reads the plan with TensorRT on the GPU that built it: {exc.message}", hint=exc.hint
            ) from None
        _print_engine(result, tgt)
        _judge_engine(result, allow_unfused)
        return
    try:
        from rescompile.engine.tensorrt import build_engine

        result = build_engine(
            model_path, tgt, options, dest, timing_cache_dir=builder.timing_cache, device_index=builder.device, verbose=verbose
        )
    except MissingDependency as exc:
        console.print("Equivalent trtexec command, to run on the device:", highlight=False)
        for line in _device_commands(model_path, dest, target, options):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        raise MissingDependency(
            f"cannot build a TensorRT engine here: {exc.message}",
            hint=_engine_hint(),
        ) from None
    _print_engine(result, tgt)
    _judge_engine(result, allow_unfused)


def _judge_engine(result: Any, allow_unfused: bool) -> None:
    """Exit 1 when an engine gate fails (``validate.gates.engine_gates``: the residual fusion, unless --allow-unfused,
    and for a --dla-core plan the DLA gate): the same gates, and lines, as ``build --backend tensorrt`` and ``deploy``."""
    from rescompile.errors import GateFailed
    from rescompile.validate.gates import FUSION_GATE, engine_gates

    failed = False
    for gate in engine_gates(result):
        if gate.name == FUSION_GATE and allow_unfused:
            continue
        console.print(gate.line() + ("" if gate.passed else " (see model.plan.layers.json)"), highlight=False, markup=False, soft_wrap=True)
        failed = failed or not gate.passed
    if failed:
        raise typer.Exit(GateFailed.exit_code)


def _engine_hint() -> str:
    from rescompile.engine.jetson import is_jetson, tensorrt_install_hint

    if is_jetson():
        return tensorrt_install_hint() + "; or run the trtexec command above"
    return (
        "pip install 'rescompile[tensorrt]' on a GPU machine, "
        "or build on the device (JetPack ships TensorRT) with the trtexec command above"
    )


def _model_path(onnx_path: Path, checks: o.BuildFolderOptions) -> Path:
    """The INT8 ONNX to build: a build folder's (checked against its manifest), or a file (checked if in a build)."""
    from rescompile.buildfolder import INT8_ONNX
    from rescompile.errors import UsageError

    if onnx_path.is_dir():
        return open_build_checked(onnx_path, **checks.overrides()).file(INT8_ONNX)  # type: ignore[no-any-return]
    if onnx_path.is_file():
        return checked_path(onnx_path, **checks.overrides())[0]
    raise UsageError(f"{onnx_path} does not exist")


def _print_engine(result: Any, tgt: Any) -> None:
    s = result.settings
    console.print(
        f"built {result.plan} for {tgt.name} on {result.device.name} (sm_{''.join(map(str, result.device.compute_capability))}), "
        f"TensorRT {result.tensorrt_version}, {result.build_seconds:.1f} s",
        highlight=False,
    )
    console.print(
        f"profile {list(s.profile.min)} / {list(s.profile.opt)} / {list(s.profile.max)}, workspace "
        f"{s.workspace_mib} MiB, flags {list(s.builder_flags) or 'none'}" + (f", DLA core {s.dla_core}" if s.dla_core is not None else ""),
        highlight=False,
    )
    for note in s.notes:
        console.print(f"note: {note}", highlight=False)
    if result.layer_precision:
        counts = ", ".join(f"{k} {v}" for k, v in result.layer_precision["counts"].items())
        console.print(f"layers by precision (model.plan.json lists each): {counts}", highlight=False)
    for a in result.fusion.adds:
        label = {"fused-int8": "[green]fused INT8[/]", "dla-io-int8": "[green]on DLA, INT8 I/O[/]"}.get(a.status, f"[red]{a.status}[/]")
        console.print(f"{label}  {a.add}  ({a.layer or '-'})")


@app.command()
def targets() -> None:
    """List the target profiles: GPU, DLA cores, memory, default workspace, TensorRT and JetPack."""
    from rescompile.engine.targets import TARGETS

    t = Table(title="rescompile targets (also sm_XY: any GPU of that compute capability)")
    t.add_column("name", no_wrap=True)
    for col in ("GPU", "DLA", "memory", "workspace", "TensorRT (JP)"):
        t.add_column(col, no_wrap=True)
    for x in TARGETS:
        trt = "-" if not x.has_tensorrt else x.tensorrt_version or "10.x / 11.x"
        t.add_row(
            x.name,
            x.sm or "-",
            str(x.dla_cores),
            f"{x.memory_gib} GiB" if x.memory_gib else "-",
            f"{x.workspace_mib} MiB" if x.workspace_mib else "-",
            trt + (f" ({x.jetpack})" if x.jetpack else ""),
        )
    console.print(t)
    for x in TARGETS:
        if x.aliases or x.note:
            extra = [f"aliases: {', '.join(x.aliases)}"] if x.aliases else []
            console.print(f"{x.name}: " + "; ".join(extra + ([x.note] if x.note else [])), highlight=False)
