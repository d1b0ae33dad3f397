"""``rescompile validate`` as a library function: a candidate against an FP32 reference, with gates and reports.

:func:`validate_candidate` opens the candidate (a model file, or a build folder checked against
its manifest), the reference (a model spec, an FP32 ONNX, or a saved ``ref.npz``) and the
validation data, measures, assembles the :class:`Report` and judges it (:func:`judge`, the
same gate path as ``build``). It returns the result; the caller raises ``verdict.failure()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.pipeline.report import ModelSection, Report, make_report, write_report
from rescompile.pipeline.settings import ModelSpec, checked_latency, timed_for
from rescompile.validate.gates import Verdict, judge
from rescompile.validate.run import ValidateSettings

if TYPE_CHECKING:
    import onnx

    from rescompile.buildfolder import BuildFolder
    from rescompile.data.holdout import DataChoice
    from rescompile.data.preprocess import Preprocess
    from rescompile.runtime.runners import Runner
    from rescompile.validate.reference import ReferenceOutputs, ValidationInputs
    from rescompile.validate.run import Measurement

log = logging.getLogger("rescompile.validate")


@dataclass(frozen=True)
class ValidateRequest:
    """What ``rescompile validate`` was asked (its options, grouped)."""

    candidate: Path
    reference: ModelSpec = field(default_factory=lambda: ModelSpec(""))  # spec "": a build folder's FP32 model
    val: str | None = None
    val_size: int | None = None
    preset: str | None = None
    layout: str = "nchw"
    fp32: Path | None = None
    no_baseline: bool = False
    save_reference: Path | None = None
    gates_file: Path | None = None
    gates: Gates = field(default_factory=Gates)  # flags: override the file's
    settings: ValidateSettings = field(default_factory=ValidateSettings)  # batch size, latency, threads, progress, Ray
    cuda_lib: str = "auto"
    layerwise: bool = False
    out: Path = Path("validation")
    no_verify_hashes: bool = False
    allow_failed_build: bool = False


@dataclass
class Checked:
    """What ``validate_candidate`` did: the judged report, the files written, the candidate's path."""

    report: Report
    verdict: Verdict
    files: list[Path]
    candidate: Path


@dataclass
class _Reference:
    runner: Any  # the FP32 runner (None for a saved reference)
    saved: ReferenceOutputs | None  # loaded from .npz
    module: Any | None  # the PyTorch module of a model spec
    fp32_onnx: onnx.ModelProto | None  # FP32 ONNX model for the baseline and layerwise blame
    input_shape: tuple[int, int, int]
    preset: str
    label: str


@dataclass
class _Inputs:
    """The candidate file, its build (if any), the reference spec, the FP32 model and the build's recording."""

    candidate: Path
    build: BuildFolder | None
    reference: str
    fp32: Path | None
    build_pre: Preprocess | None = None
    build_doc: dict[str, Any] | None = None


def _open_reference(spec: ModelSpec, threads: int | None) -> _Reference:
    """A saved reference (.npz, no PyTorch needed), an FP32 ONNX file, or a PyTorch model spec."""
    from rescompile.pipeline.validator import reference_runner

    if spec.spec.lower().endswith(".npz"):
        from rescompile.validate.reference import load_reference

        saved = load_reference(Path(spec.spec))
        c, h, w = saved.inputs.shape[1:]  # type: ignore[union-attr]
        return _Reference(None, saved, None, None, (c, h, w), "", saved.runner)
    if spec.spec.lower().endswith(".onnx"):
        from rescompile.models.onnx_source import describe_onnx
        from rescompile.readers import read_onnx

        info = describe_onnx(Path(spec.spec), require_residual=False)
        model = read_onnx(Path(spec.spec))
        return _Reference(reference_runner(model, threads), None, None, model, info.input_shape, info.preset, spec.spec)
    from rescompile.models import load_model

    loaded = load_model(spec.spec, **spec.load_kwargs())
    return _Reference(reference_runner(loaded.module, threads), None, loaded.module, None, loaded.input_shape, loaded.preset, spec.spec)


def _build_inputs(build: BuildFolder) -> tuple[Path, Path, Preprocess | None, dict[str, Any]]:
    """A build folder's INT8 model, FP32 simplified model (both checked against its manifest), preprocessing, manifest."""
    from rescompile.buildfolder import INT8_ONNX, SIMPLIFIED_ONNX
    from rescompile.data.preprocess import preprocess_from_dict

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


def _exported_fp32(module: Any, input_shape: tuple[int, int, int]) -> onnx.ModelProto:
    """The PyTorch reference exported and simplified the way ``build`` does (same tensor names)."""
    from rescompile.export import ExportConfig, export_onnx
    from rescompile.simplify import SimplifyConfig, simplify

    model, _ = export_onnx(module, input_shape, ExportConfig())
    return simplify(model, input_shape, SimplifyConfig()).model


def _settings(req: ValidateRequest, gates: Gates) -> ValidateSettings:
    """``req.settings`` with the latency the gates read checked (:func:`rescompile.pipeline.settings.checked_latency`)."""
    return replace(req.settings, latency=checked_latency(req.settings.latency, gates))


def _inputs(req: ValidateRequest, warn: Callable[[str], None]) -> _Inputs:
    """The candidate (a build folder: its INT8 model against its FP32 model), each file checked against its build."""
    from rescompile.buildfolder import build_of, open_build

    verify, allow = not req.no_verify_hashes, req.allow_failed_build
    if not req.candidate.exists():
        raise UsageError(f"candidate not found: {req.candidate}", hint="pass a model file (.onnx, a TensorRT plan) or a build folder")
    ref_spec, fp32 = req.reference.spec or None, req.fp32
    if req.candidate.is_dir():  # a build folder: its INT8 model against its FP32 model, its preprocessing and data
        folder = open_build(req.candidate, verify=verify, allow_failed=allow)
        for line in folder.warnings():
            warn(line)
        cand, simplified, build_pre, build_doc = _build_inputs(folder)
        found = _Inputs(cand, folder, ref_spec or str(simplified), fp32 or simplified, build_pre, build_doc)
    else:
        build = build_of(req.candidate, verify=verify, allow_failed=allow)
        for line in build.warnings() if build is not None else ():
            warn(line)
        cand = build.file(req.candidate.name) if build is not None else req.candidate
        found = _Inputs(cand, build, ref_spec or "", fp32)
    if found.fp32 is not None:
        found.fp32 = _reference_file(found.fp32, req.no_verify_hashes)
    if found.reference.lower().endswith(".onnx"):
        found.reference = str(_reference_file(Path(found.reference), req.no_verify_hashes))
    if not found.reference:
        raise UsageError("no FP32 reference", hint="pass --reference (a model spec, an FP32 .onnx, or ref.npz)")
    return found


def _reference_outputs(
    req: ValidateRequest, ref: _Reference, found: _Inputs, choice: DataChoice | None, gates: Gates, settings: ValidateSettings
) -> tuple[ValidationInputs, ReferenceOutputs, DataChoice]:
    """The inputs and the FP32 outputs: those a saved reference carries, or the reference run on the validation data."""
    from rescompile.data.holdout import DataChoice
    from rescompile.data.preprocess import check_matches, get_preset
    from rescompile.data.sources import DataSource, check_shape
    from rescompile.validate.gates import check_label_gates
    from rescompile.validate.reference import ValidationInputs
    from rescompile.validate.run import compute_reference

    if ref.saved is not None:
        if req.val is not None:
            raise UsageError("a saved reference carries its own inputs: drop --val", hint="or pass a model as --reference")
        if req.save_reference is not None:
            raise UsageError("--save-reference needs a model as --reference, not a saved reference")
        choice = DataChoice.validation_only("given", DataSource(found.reference, len(ref.saved.logits), labels=ref.saved.labels))
        check_label_gates(gates, choice)
        return ref.saved.as_inputs(), ref.saved, choice
    if choice is None:
        raise RuntimeError("a model reference needs validation data")
    c, h, _ = ref.input_shape
    pre = get_preset(req.preset, size=h, channels=c) if req.preset else found.build_pre
    pre = pre or get_preset(ref.preset, size=h, channels=c)
    if found.build_pre is not None:  # the build was calibrated with its recipe: validate with the same one
        check_matches(found.build_pre.to_dict(), pre)
    check_shape(choice.val, pre, ref.input_shape)
    inputs = ValidationInputs.from_source(choice.val, pre)
    out = compute_reference(
        ref.runner, inputs, settings, keep_inputs=req.save_reference is not None, meta={"model": ref.label, "preprocess": pre.to_dict()}
    )
    return inputs, out, choice


def _baseline(req: ValidateRequest, ref: _Reference, found: _Inputs, gates: Gates) -> tuple[Runner | None, onnx.ModelProto | None]:
    """The FP32 runner timed in the same run (None with --no-baseline or without an FP32 model) and the FP32 ONNX."""
    from rescompile.buildfolder import SIMPLIFIED_ONNX
    from rescompile.runtime.runners import OnnxRuntimeRunner, load_onnx

    fp32_model = load_onnx(found.fp32) if found.fp32 is not None else ref.fp32_onnx
    if fp32_model is None and ref.module is not None and (req.layerwise or not req.no_baseline):
        fp32_model = _exported_fp32(ref.module, ref.input_shape)
    threads = req.settings.threads
    baseline = None if req.no_baseline or fp32_model is None else OnnxRuntimeRunner(fp32_model, "onnxruntime-fp32", threads)
    if gates.min_speedup is not None and baseline is None:
        raise UsageError("--min-speedup needs an FP32 baseline timed in the same run", hint=f"pass --fp32 {SIMPLIFIED_ONNX}")
    if req.layerwise and (fp32_model is None or found.candidate.suffix.lower() != ".onnx"):
        raise UsageError(
            "--layerwise compares two ONNX graphs: an ONNX candidate and its FP32 model", hint=f"pass --fp32 {SIMPLIFIED_ONNX}"
        )
    return baseline, fp32_model


def validate_candidate(req: ValidateRequest, warn: Callable[[str], None] = log.warning) -> Checked:
    """Validate a candidate against FP32 on the same inputs: accuracy, agreement, latency, gates, reports.

    Args:
        req: the candidate, reference, data, gates and timing.
        warn: called with each warning line (an integrity override in effect).

    Returns:
        The judged report and the files written into ``req.out``; ``verdict.failure()`` is the
        GateFailed (exit 1) to raise when a gate failed.

    Raises:
        UsageError: bad input (exit 2); MissingDependency: TensorRT for a plan (exit 3).
    """
    from rescompile.data.holdout import validation_data
    from rescompile.data.layout import check_layout
    from rescompile.runtime.cuda_libs import check_choice
    from rescompile.runtime.runners import load_onnx, open_runner
    from rescompile.validate.gates import check_label_gates, resolve_gates
    from rescompile.validate.reference import save_reference
    from rescompile.validate.run import validate

    gates = resolve_gates(req.gates_file, req.gates)
    check_layout(req.layout, "--layout")
    settings = _settings(req, gates)
    found = _inputs(req, warn)
    # the files first (an unreadable candidate is named before missing data), read once
    cand_onnx = load_onnx(found.candidate) if found.candidate.suffix.lower() == ".onnx" else None
    # the validation data, and gates that need labels it lacks (exit 2), are settled before any work
    saved_ref = found.reference.lower().endswith(".npz")
    choice = None if saved_ref else validation_data(req.val, found.build_doc, found.reference, req.layout, req.val_size)
    if choice is not None:
        check_label_gates(gates, choice)
    threads = req.settings.threads
    candidate = open_runner(found.candidate, threads=threads, cuda_lib=check_choice(req.cuda_lib), model=cand_onnx)  # no TensorRT: early
    try:
        ref = _open_reference(replace(req.reference, spec=found.reference), threads)
        baseline, fp32_model = _baseline(req, ref, found, gates)
        inputs, reference, choice = _reference_outputs(req, ref, found, choice, gates, settings)
        settings = timed_for(settings, cand_onnx, candidate.name)  # CPU latency not representative: timed briefly by default
        measured = validate(reference, candidate, inputs, baseline=baseline, settings=settings)
    finally:  # a TensorRT runner releases its engine before its CUDA context (issue 20, D6)
        close = getattr(candidate, "close", None)
        if close is not None:
            close()
    report = _report(req, measured, found, ref, reference, choice, cand_onnx, fp32_model, inputs)
    verdict = judge(report, gates)
    files = write_report(req.out, report)
    if req.save_reference is not None:
        save_reference(req.save_reference, reference)
        files.append(req.save_reference)
    return Checked(report, verdict, files, found.candidate)


def _report(
    req: ValidateRequest,
    measured: Measurement,
    found: _Inputs,
    ref: _Reference,
    reference: ReferenceOutputs,
    choice: DataChoice,
    cand_onnx: onnx.ModelProto | None,
    fp32_model: onnx.ModelProto | None,
    inputs: ValidationInputs,
) -> Report:
    model = ModelSection(Path(str(found.candidate)).stem, ref.input_shape, int(reference.logits.shape[1]), ref.label)
    layerwise = None
    if req.layerwise:
        from rescompile.validate.layerwise import layerwise_blame

        layerwise = layerwise_blame(fp32_model, cand_onnx, inputs.head(req.settings.layerwise_samples))  # type: ignore[arg-type]
    build = found.build
    return make_report(
        measured,
        model,
        choice,
        cand_onnx,
        notes=build.warnings() if build is not None else [],
        layerwise=layerwise,
        build=None if build is None else build.record(),
    )
