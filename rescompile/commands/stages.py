"""Single-stage commands: ``export``, ``simplify`` and ``quantize``, each the build's own stage (:mod:`rescompile.pipeline.stages`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rescompile.buildfolder import FP32_ONNX, INT8_ONNX, QDQ_PLAN, RANGES, SIMPLIFIED_ONNX
from rescompile.commands import options as o
from rescompile.commands.base import app, checked_path, console
from rescompile.quantize.registry import policy_help

OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file.")]


@app.command(epilog="Example:\n\n  rescompile export resnet56 --weights ckpt.pt --out resnet56.onnx")
def export(
    model: Annotated[str, typer.Argument(help="demo | resnet20..resnet110 | torchvision:<arch> | TorchScript file")] = "demo",
    out: OutFile = Path(FP32_ONNX),
    *,
    loading: o.ModelOptions,
    onnx_export: o.ExportOptions,
) -> None:
    """Export a PyTorch ResNet to ONNX (dynamic batch), checked against PyTorch on fixed inputs."""
    from rescompile.errors import UsageError
    from rescompile.io import save_onnx
    from rescompile.models import load_model
    from rescompile.pipeline import stages

    spec = loading.spec(model)
    loaded = load_model(spec.spec, **spec.load_kwargs())
    if loaded.module is None:
        raise UsageError(f"{model} is already ONNX; nothing to export")
    exported = stages.export(loaded, onnx_export.settings())
    save_onnx(out, exported.model)
    console.print(f"wrote {out} (max abs error vs PyTorch {exported.max_abs_error:.2e})", highlight=False)


@app.command(name="simplify")
def simplify_cmd(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model.")],
    out: OutFile = Path(SIMPLIFIED_ONNX),
    no_onnxsim: Annotated[bool, typer.Option("--no-onnxsim", help="Only fold BatchNorm.")] = False,
    *,
    checks: o.BuildFolderOptions,
) -> None:
    """Simplify with onnxsim and fold BatchNorm into Conv; fails (exit 1) if outputs move."""
    from rescompile.io import save_onnx
    from rescompile.models.onnx_source import describe_onnx
    from rescompile.pipeline import stages
    from rescompile.readers import read_onnx
    from rescompile.simplify import SimplifyConfig

    model = checked_path(model, **checks.overrides())[0]  # a build folder's file: checked against its manifest
    shape = describe_onnx(model, require_residual=False).input_shape
    result = stages.simplify(stages.Exported(read_onnx(model), None), shape, SimplifyConfig(use_onnxsim=not no_onnxsim)).result
    save_onnx(out, result.model)
    console.print(
        f"wrote {out}: {result.nodes_before} -> {result.nodes_after} nodes, "
        f"{result.batchnorms_folded} BatchNorm folded, max abs error {result.max_abs_error:.2e}",
        highlight=False,
    )


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Simplified FP32 ONNX model.")],
    ranges: Annotated[Path, typer.Option(help=f"{RANGES} from `rescompile calibrate` (same model).")],
    out: OutFile = Path(INT8_ONNX),
    policy: Annotated[str, typer.Option(help=policy_help("onnxruntime"))] = "tensorrt",
    keep_fp: o.KeepFpOpt = None,
    keep_first_last: o.KeepFirstLastOpt = False,
    plan_out: Annotated[Path | None, typer.Option(help=f"Also write the placement plan ({QDQ_PLAN}).")] = None,
    *,
    checks: o.BuildFolderOptions,
) -> None:
    """Insert explicit Q/DQ by a placement policy, then prove the INT8 graph keeps the FP32 topology."""
    from rescompile.calibrate.ranges import CalibrationResult
    from rescompile.io import save_onnx, write_text_atomic
    from rescompile.pipeline import stages
    from rescompile.pipeline.settings import PlanSettings
    from rescompile.quantize import insert_qdq
    from rescompile.quantize.registry import parse_policy
    from rescompile.readers import read_onnx

    model = checked_path(model, **checks.overrides())[0]  # build folders' files: checked against their manifests
    ranges = checked_path(ranges, **checks.overrides())[0]
    fp32 = read_onnx(model)
    calib = CalibrationResult.read(ranges)
    plan = stages.plan(fp32, PlanSettings(parse_policy(policy, "onnxruntime").name, tuple(keep_fp or ()), keep_first_last)).plan
    int8 = stages.proven(fp32, insert_qdq(fp32, plan, calib.ranges), plan).model  # a broken graph: VerificationError (exit 1)
    save_onnx(out, int8)
    if plan_out is not None:
        write_text_atomic(plan_out, plan.to_json())
    console.print(
        f"wrote {out}: {len(plan.activations)} activation Q/DQ, {len(plan.weights)} INT8 weights, "
        f"{len(plan.residual_adds)} residual Adds verified ({policy})",
        highlight=False,
    )
