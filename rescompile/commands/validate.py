"""``rescompile validate``: a candidate (INT8/FP16 ONNX, TensorRT plan) against an FP32 reference, with gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.commands.base import app, checked_path, console, open_build_checked, run_cli
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


@dataclass
class _Reference:
    runner: Any  # the FP32 runner (unused for a saved reference)
    saved: Any | None  # ReferenceOutputs loaded from .npz
    module: Any | None  # the PyTorch module of a model spec
    fp32_onnx: Any | None  # FP32 ONNX model for the baseline and layerwise blame
    input_shape: tuple[int, int, int]
    preset: str
    label: str


def _open_reference(spec: str, *, weights: Path | None, num_classes: int | None, in_channels: int | None,
                    input_size: int | None, trust_checkpoint: bool, threads: int | None) -> _Reference:  # fmt: skip
    """A saved reference (.npz, no PyTorch needed), an FP32 ONNX file, or a PyTorch model spec."""
    from rescompile.runtime.runners import OnnxRuntimeRunner, TorchRunner

    if spec.lower().endswith(".npz"):
        from rescompile.validate.reference import load_reference

        saved = load_reference(Path(spec))
        c, h, w = saved.inputs.shape[1:]  # type: ignore[union-attr]
        return _Reference(None, saved, None, None, (c, h, w), "", saved.runner)
    if spec.lower().endswith(".onnx"):
        from rescompile.models.onnx_source import describe_onnx, read_onnx

        info = describe_onnx(Path(spec), require_residual=False)
        model = read_onnx(Path(spec))
        return _Reference(OnnxRuntimeRunner(model, "onnxruntime-fp32", threads), None, None, model, info.input_shape,
                          info.preset, spec)  # fmt: skip
    from rescompile.models import load_model

    loaded = load_model(spec, weights=weights, num_classes=num_classes, in_channels=in_channels,
                        input_size=input_size, trust_checkpoint=trust_checkpoint)  # fmt: skip
    return _Reference(TorchRunner(loaded.module, "pytorch-fp32", threads), None, loaded.module, None, loaded.input_shape,
                      loaded.preset, spec)  # fmt: skip


def _build_inputs(build: Any) -> tuple[Path, Path, Any, dict[str, Any]]:
    """A build folder's INT8 model, FP32 simplified model (both checked against its manifest), preprocessing, manifest."""
    from rescompile.buildfolder import INT8_ONNX, SIMPLIFIED_ONNX
    from rescompile.data.preprocess import preprocess_from_dict
    from rescompile.errors import UsageError

    pre_doc = build.preprocess
    try:
        pre = preprocess_from_dict(pre_doc) if pre_doc else None
    except UsageError as exc:
        raise UsageError(f"{build.manifest_path}: 'preprocess' is {exc.message}") from None
    doc = {**build.manifest, "config": build.config}  # build.config: a UsageError naming the manifest if not an object
    return build.file(INT8_ONNX), build.file(SIMPLIFIED_ONNX), pre, doc


def _reference_file(path: Path, no_verify_hashes: bool) -> Path:
    """An FP32 reference file; checked against its build's manifest when it is in one (a failed build's FP32 is fine)."""
    from rescompile.buildfolder import build_of

    build = build_of(path, verify=not no_verify_hashes, allow_failed=True)
    return build.file(path.name) if build is not None else path


def _exported_fp32(module: Any, input_shape: tuple[int, int, int]) -> Any:
    """The PyTorch reference exported and simplified the way ``build`` does (same tensor names)."""
    from rescompile.export import ExportConfig, export_onnx
    from rescompile.simplify import SimplifyConfig, simplify

    model, _ = export_onnx(module, input_shape, ExportConfig())
    return simplify(model, input_shape, SimplifyConfig()).model


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
    from rescompile.data.holdout import DataChoice, check_label_gates, validation_data
    from rescompile.data.layout import check_layout
    from rescompile.data.preprocess import check_matches, get_preset
    from rescompile.data.sources import DataSource, check_shape
    from rescompile.errors import GateFailed, UsageError
    from rescompile.runtime.cuda_libs import check_choice
    from rescompile.runtime.runners import OnnxRuntimeRunner, load_onnx, open_runner
    from rescompile.scale.cluster import ray_settings
    from rescompile.validate.console import print_summary
    from rescompile.validate.gates import evaluate_gates, resolve_gates
    from rescompile.validate.latency import LatencySettings
    from rescompile.validate.notes import latency_notes
    from rescompile.validate.reference import ValidationInputs
    from rescompile.validate.reference import save_reference as write_reference
    from rescompile.validate.run import ValidateSettings, compute_reference
    from rescompile.validate.run import validate as run_validate
    from rescompile.validate.write import write_reports

    def go() -> dict[str, Any]:
        gates = resolve_gates(gates_file, Gates(max_top1_drop, min_agreement, min_cosine, max_p99_ms, min_speedup, gate_batch))
        check_layout(layout, "--layout")
        settings = ValidateSettings(batch_size, LatencySettings(tuple(latency_batch or (1, 32)), warmup, latency_runs,
                                                                latency_budget, required=() if gates.latency_batch is None else
                                                                (gates.latency_batch,)), threads, not quiet, layerwise_samples,
                                    ray_settings(ray, ray_address, shards))  # fmt: skip
        settings.latency.check()
        if gates.latency_batch is not None and gates.latency_batch not in settings.latency.batches:
            raise UsageError(f"--gate-batch {gates.latency_batch} is not a timed batch size {list(settings.latency.batches)}",
                             hint="add it with --latency-batch")  # fmt: skip

        cand_path, ref_spec, fp32_path, build_pre, build_doc = candidate, reference, fp32, None, None
        overrides = {"no_verify_hashes": no_verify_hashes, "allow_failed_build": allow_failed_build}
        if not candidate.exists():
            raise UsageError(f"candidate not found: {candidate}",
                             hint="pass a model file (.onnx, a TensorRT plan) or a build folder")  # fmt: skip
        if candidate.is_dir():  # a build folder: its INT8 model against its FP32 model, its preprocessing and data
            build = open_build_checked(candidate, **overrides)
            cand_path, simplified, build_pre, build_doc = _build_inputs(build)
            ref_spec, fp32_path = ref_spec or str(simplified), fp32_path or simplified
        else:
            cand_path, build = checked_path(candidate, **overrides)
        if fp32_path is not None:
            fp32_path = _reference_file(fp32_path, no_verify_hashes)
        if ref_spec is not None and ref_spec.lower().endswith(".onnx"):
            ref_spec = str(_reference_file(Path(ref_spec), no_verify_hashes))
        if ref_spec is None:
            raise UsageError("no FP32 reference", hint="pass --reference (a model spec, an FP32 .onnx, or ref.npz)")
        saved_ref = ref_spec.lower().endswith(".npz")
        # the validation data, and gates that need labels it lacks (exit 2), are settled before any work
        choice: Any = None if saved_ref else validation_data(val, build_doc, ref_spec, layout, val_size)
        if choice is not None:
            check_label_gates(gates, choice)
        cand_runner = open_runner(cand_path, threads=threads, cuda_lib=check_choice(cuda_lib))  # first: no TensorRT fails early

        ref = _open_reference(ref_spec, weights=weights, num_classes=num_classes, in_channels=in_channels,
                              input_size=input_size, trust_checkpoint=trust_checkpoint, threads=threads)  # fmt: skip
        fp32_model = load_onnx(fp32_path) if fp32_path is not None else ref.fp32_onnx
        if fp32_model is None and ref.module is not None and (layerwise or not no_baseline):
            fp32_model = _exported_fp32(ref.module, ref.input_shape)
        baseline = None if no_baseline or fp32_model is None else OnnxRuntimeRunner(fp32_model, "onnxruntime-fp32", threads)
        if gates.min_speedup is not None and baseline is None:
            raise UsageError("--min-speedup needs an FP32 baseline timed in the same run", hint="pass --fp32 model.simplified.onnx")
        if layerwise and (fp32_model is None or cand_path.suffix.lower() != ".onnx"):
            raise UsageError("--layerwise compares two ONNX graphs: an ONNX candidate and its FP32 model",
                             hint="pass --fp32 model.simplified.onnx")  # fmt: skip

        if ref.saved is not None:
            if val is not None:
                raise UsageError("a saved reference carries its own inputs: drop --val", hint="or pass a model as --reference")
            if save_reference is not None:
                raise UsageError("--save-reference needs a model as --reference, not a saved reference")
            inputs, reference_out = ref.saved.as_inputs(), ref.saved
            choice = DataChoice.validation_only("given", DataSource(ref_spec, len(ref.saved.logits), labels=ref.saved.labels))
            check_label_gates(gates, choice)
        else:
            c, h, _ = ref.input_shape
            pre = get_preset(preset, size=h, channels=c) if preset else build_pre
            pre = pre or get_preset(ref.preset, size=h, channels=c)
            if build_pre is not None:  # the build was calibrated with its recipe: validate with the same one
                check_matches(build_pre.to_dict(), pre)
            src = choice.val
            check_shape(src, pre, ref.input_shape)
            inputs = ValidationInputs.from_source(src, pre)
            reference_out = compute_reference(ref.runner, inputs, settings, keep_inputs=save_reference is not None,
                                              meta={"model": ref.label, "preprocess": pre.to_dict()})  # fmt: skip
        cand_onnx = load_onnx(cand_path) if cand_path.suffix.lower() == ".onnx" else None
        if latency_notes(cand_onnx, cand_runner.name):  # CPU latency not representative: timed briefly by default
            from dataclasses import replace

            settings = replace(settings, latency=replace(settings.latency, brief=True))
        report = run_validate(reference_out, cand_runner, inputs, baseline=baseline, settings=settings)
        report["model"] = {"name": Path(str(cand_path)).stem, "reference": ref.label, "input_shape": list(ref.input_shape),
                           "num_classes": int(reference_out.logits.shape[1])}  # fmt: skip
        report["validation"] = choice.to_dict()
        notes = latency_notes(cand_onnx, report["candidate"])
        if notes:
            report["notes"] = notes
        if layerwise:
            from rescompile.validate.layerwise import layerwise_blame

            sample = inputs.head(layerwise_samples)
            report["layerwise"] = layerwise_blame(fp32_model, cand_onnx, sample).to_dict()  # type: ignore[arg-type]
        if build is not None:  # which build was validated, and whether its integrity was checked
            report["build"] = build.record()
            report["notes"] = report.get("notes", []) + build.warnings()
            if not report["notes"]:
                del report["notes"]
        results = evaluate_gates(report, gates)
        report["gates"] = [g.to_dict() for g in results]
        report["passed"] = all(g.passed for g in results)
        files = write_reports(out, report)
        if save_reference is not None:
            write_reference(save_reference, reference_out)
            files.append(save_reference)
        print_summary(console, report, f"rescompile validate: {cand_path} ({report['samples']} samples)")
        console.print("wrote " + ", ".join(str(f) for f in files), highlight=False)
        failed = [g.line() for g in results if not g.passed]
        if failed:
            raise GateFailed(f"{len(failed)} of {len(results)} gate(s) failed:\n  " + "\n  ".join(failed))
        return report

    run_cli(go)
