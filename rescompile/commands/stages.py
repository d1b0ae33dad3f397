"""Single-stage commands: ``export``, ``simplify`` and ``quantize``, each one library call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.cli import app, console, run_cli
from rescompile.quantize.registry import policy_help

OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file.")]


@app.command(epilog="Example:\n\n  rescompile export resnet56 --weights ckpt.pt --out resnet56.onnx")
def export(
    model: Annotated[str, typer.Argument(help="demo | resnet20..resnet110 | torchvision:<arch> | TorchScript file")] = "demo",
    out: OutFile = Path("model.fp32.onnx"),
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="Checkpoint for the architecture.")] = None,
    num_classes: Annotated[int | None, typer.Option(min=1)] = None,
    in_channels: Annotated[int | None, typer.Option(min=1)] = None,
    input_size: Annotated[int | None, typer.Option(min=8)] = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow unpickling arbitrary objects from --weights.")] = False,
    exporter: Annotated[str, typer.Option(help="torchscript | dynamo")] = "torchscript",
    opset: Annotated[int, typer.Option(min=17)] = 17,
) -> None:
    """Export a PyTorch ResNet to ONNX (dynamic batch), checked against PyTorch on fixed inputs."""
    from rescompile.errors import UsageError
    from rescompile.export import ExportConfig, export_onnx
    from rescompile.io import save_onnx
    from rescompile.models import load_model

    def go() -> Any:
        loaded = load_model(model, weights=weights, num_classes=num_classes, in_channels=in_channels,
                            input_size=input_size, trust_checkpoint=trust_checkpoint)  # fmt: skip
        if loaded.module is None:
            raise UsageError(f"{model} is already ONNX; nothing to export")
        onnx_model, parity = export_onnx(loaded.module, loaded.input_shape, ExportConfig(opset=opset, exporter=exporter))
        save_onnx(out, onnx_model)
        console.print(f"wrote {out} (max abs error vs PyTorch {parity.max_abs_error:.2e})", highlight=False)

    run_cli(go)


@app.command(name="simplify")
def simplify_cmd(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model.")],
    out: OutFile = Path("model.simplified.onnx"),
    no_onnxsim: Annotated[bool, typer.Option("--no-onnxsim", help="Only fold BatchNorm.")] = False,
) -> None:
    """Simplify with onnxsim and fold BatchNorm into Conv; fails (exit 1) if outputs move."""
    from rescompile.io import save_onnx
    from rescompile.models.onnx_source import describe_onnx, read_onnx
    from rescompile.simplify import SimplifyConfig, simplify

    def go() -> Any:
        shape = describe_onnx(model, require_residual=False).input_shape
        result = simplify(read_onnx(model), shape, SimplifyConfig(use_onnxsim=not no_onnxsim))
        save_onnx(out, result.model)
        console.print(f"wrote {out}: {result.nodes_before} -> {result.nodes_after} nodes, "
                      f"{result.batchnorms_folded} BatchNorm folded, max abs error {result.max_abs_error:.2e}",
                      highlight=False)  # fmt: skip

    run_cli(go)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Simplified FP32 ONNX model.")],
    ranges: Annotated[Path, typer.Option(help="ranges.json from `rescompile calibrate` (same model).")],
    out: OutFile = Path("model.int8.onnx"),
    policy: Annotated[str, typer.Option(help=policy_help("onnxruntime"))] = "tensorrt",
    keep_fp: Annotated[list[str] | None, typer.Option("--keep-fp", help="Node-name glob or op type to keep in FP; repeatable.")] = None,
    keep_first_last: Annotated[bool, typer.Option(help="Keep the first and last weighted layers in FP.")] = False,
    plan_out: Annotated[Path | None, typer.Option(help="Also write the placement plan (qdq_plan.json).")] = None,
) -> None:
    """Insert explicit Q/DQ by a placement policy, then prove the INT8 graph keeps the FP32 topology."""
    from rescompile.calibrate.ranges import CalibrationResult
    from rescompile.errors import VerificationError
    from rescompile.graph.verify import verify_int8
    from rescompile.io import save_onnx, write_text_atomic
    from rescompile.models.onnx_source import read_onnx
    from rescompile.quantize import insert_qdq, plan_qdq
    from rescompile.quantize.registry import parse_policy

    def go() -> Any:
        fp32 = read_onnx(model)
        calib = CalibrationResult.read(ranges)
        plan = plan_qdq(fp32, parse_policy(policy, "onnxruntime").name, keep_fp=tuple(keep_fp or ()), keep_first_last=keep_first_last)
        int8 = insert_qdq(fp32, plan, calib.ranges)
        proof = verify_int8(fp32, int8, plan)
        if not proof.ok:
            raise VerificationError("INT8 graph breaks the placement rules: " + "; ".join(map(str, proof.violations[:5])))
        save_onnx(out, int8)
        if plan_out is not None:
            write_text_atomic(plan_out, plan.to_json())
        console.print(f"wrote {out}: {len(plan.activations)} activation Q/DQ, {len(plan.weights)} INT8 weights, "
                      f"{len(plan.residual_adds)} residual Adds verified ({policy})", highlight=False)  # fmt: skip

    run_cli(go)
