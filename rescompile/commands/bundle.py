"""``rescompile bundle``: a build folder -> one deterministic file (``model.rcb``) for a device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.commands import options as o
from rescompile.commands.base import app, console, warn
from rescompile.commands.groups import OptionGroup


@dataclass(frozen=True)
class BundleReference(OptionGroup):
    """The reference inputs bundled with their labels and FP32 logits."""

    reference_size: Annotated[
        int, typer.Option(min=1, help="Reference inputs (with labels and FP32 logits) to bundle.", rich_help_panel=o.DATA)
    ] = 256
    val: Annotated[
        str | None, typer.Option(help="Data for the reference inputs (default: the build's validation data).", rich_help_panel=o.DATA)
    ] = None
    layout: Annotated[str, typer.Option(help="Layout of .npy/.npz images given with --val: nchw | nhwc.", rich_help_panel=o.DATA)] = "nchw"
    reference_dtype: Annotated[
        str,
        typer.Option(
            help="Store reference inputs as float16 (half the size; the FP32 logits are computed on the stored values) or float32.",
            rich_help_panel=o.DATA,
        ),
    ] = "float16"
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for the FP32 reference logits.", rich_help_panel=o.DATA)] = None


@dataclass(frozen=True)
class DeviceGates(OptionGroup):
    """The accuracy gates `rescompile deploy` applies on the device."""

    gates_file: Annotated[
        Path | None, typer.Option("--gates", help="YAML recipe of accuracy gates; overrides the build's.", rich_help_panel=o.VALIDATION)
    ] = None
    max_top1_drop: Annotated[
        float | None, typer.Option(help="Gate on the device: most top-1 points lost vs FP32.", rich_help_panel=o.VALIDATION)
    ] = None
    min_agreement: Annotated[
        float | None, typer.Option(help="Gate on the device: minimum top-1 agreement, percent.", rich_help_panel=o.VALIDATION)
    ] = None
    min_cosine: Annotated[
        float | None, typer.Option(help="Gate on the device: minimum mean logit cosine.", rich_help_panel=o.VALIDATION)
    ] = None
    max_class_drop: Annotated[
        float | None, typer.Option(help="Gate on the device: most top-1 points lost on any class.", rich_help_panel=o.VALIDATION)
    ] = None
    gate_mode: o.GateModeOpt = None

    def resolve(self) -> Any:
        """The gates to bundle (None: the build's own)."""
        from rescompile.config import Gates
        from rescompile.validate.gates import resolve_gates

        flags = Gates(
            max_top1_drop=self.max_top1_drop,
            min_agreement=self.min_agreement,
            min_cosine=self.min_cosine,
            max_class_drop=self.max_class_drop,
            mode=self.gate_mode,
        )
        return resolve_gates(self.gates_file, flags) if self.gates_file is not None or flags != Gates() else None


@app.command(
    epilog="Examples:\n\n  rescompile bundle build/demo -o demo.rcb\n\n"
    "  rescompile bundle build/resnet50 -o resnet50.rcb --reference-size 500 --min-agreement 98",
)
def bundle(
    build: Annotated[Path, typer.Argument(metavar="BUILD", help="A build folder (tensorrt placement policy).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle file to write (e.g. model.rcb).", rich_help_panel=o.OUTPUT)],
    *,
    reference: BundleReference,
    device_gates: DeviceGates,
    allow_failed_build: o.AllowFailedOpt = False,
) -> None:
    """Bundle a build for a device: INT8 ONNX, block map, ranges, TensorRT calibration cache, preprocessing,
    gates, reference inputs with labels and FP32 logits, and the sha256 of every member.

    The build's artifacts are checked against its manifest.json; a build whose gates failed, or one
    made with the onnxruntime placement policy, is refused (exit 2). Same build, same options: same bytes.
    """
    from rescompile.deploy.bundle import BundleOptions, make_bundle

    r = reference
    o.check_layout(r.layout)
    gates = device_gates.resolve()
    if allow_failed_build:
        warn(f"--allow-failed-build: {build} may be a build whose gates failed; the bundle records it")
    doc = make_bundle(build, out, BundleOptions(r.reference_size, r.val, r.layout, allow_failed_build, gates, r.threads, r.reference_dtype))
    size = out.stat().st_size
    gate_text = (
        ", ".join(f"{k} {v:g}" for k, v in doc["gates"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)) or "none"
    )
    console.print(
        f"wrote {out} ({size / 2**20:.1f} MiB): {doc['model']['name']}, {doc['model']['residual_adds']} residual "
        f"Adds, {doc['reference']['samples']} reference inputs"
        f"{' with labels' if doc['reference']['labelled'] else ''}, gates: {gate_text}",
        highlight=False,
    )
    if gate_text == "none":
        floor = "" if doc["gates"].get("default_floor") is False else " beyond the default floor (docs/gates.md)"
        warn(
            f"the bundle carries no accuracy gate: deploy will report agreement and cosine but cannot fail on them{floor} "
            "(add --min-agreement / --min-cosine / --max-top1-drop / --max-class-drop)"
        )
