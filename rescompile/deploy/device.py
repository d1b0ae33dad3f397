"""``rescompile deploy`` on the device: bundle -> engine (or an ONNX Runtime session) -> validated like CI.

The flow: unpack and hash-check the bundle (:func:`rescompile.deploy.bundle.open_bundle`);
with ``backend="tensorrt"`` build the engine for the detected or named target with
:func:`rescompile.engine.tensorrt.build_engine` (which also checks that every residual Add is
fused into an INT8 layer) and run it with the TensorRT runner; with ``backend="onnxruntime"``
run the bundled INT8 ONNX on ONNX Runtime's CPU provider instead. Either way the candidate's
logits on the bundled reference inputs are compared with the bundled FP32 logits under the
bundled gates, and ``deploy.json`` / ``deploy.md`` / ``junit.xml`` and a sidecar are written.

Nothing here imports torch or onnxsim (``tests/integration/test_deploy.py`` runs it with
those imports made to fail): a Jetson image has TensorRT, numpy and onnx, rarely PyTorch.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.buildfolder import DEPLOY_REPORT, DEPLOY_REPORT_MD, INT8_ONNX, JUNIT_XML, ORT_SIDECAR
from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.validate.gates import GateResult, engine_gates, judge
from rescompile.validate.run import Measurement

BACKENDS = ("tensorrt", "onnxruntime")
DEPLOY_SCHEMA = "rescompile.deploy/1"  # rescompile/schemas/deploy.schema.json


@dataclass(frozen=True)
class DeployOptions:
    """What ``rescompile deploy`` takes on the device."""

    backend: str = "tensorrt"
    target: str = "auto"  # auto: the GPU this machine has (generic profile of its compute capability)
    dla_core: int | None = None
    out: Path | None = None  # default: <bundle>.deploy/ beside the bundle
    threads: int | None = None
    batch: int = 32
    cuda_lib: str = "auto"  # device buffers for the TensorRT runner: auto | cuda-python | pycuda | torch
    rest_precision: str | None = None  # the engine's non-quantized layers: fp16 (default) | fp32
    gate_mode: str | None = None  # overrides the bundle's: point | confident
    no_default_gates: bool = False  # no default floor even when the bundle has no accuracy gate


@dataclass
class DeployReport:
    """``deploy.json`` (``rescompile.deploy/1``): the same typed :class:`Measurement` and gates as report.json.

    The measurement holds the bundled reference's runner, the candidate, the samples, accuracy,
    agreement, per-class delta and this run's timings (no latency: deploy compares logits);
    gates and ``passed`` are filled by :func:`rescompile.validate.gates.judge`, as for a build.
    """

    measurement: Measurement
    model: dict[str, Any]  # the bundle's model record (name, input shape, residual Adds ...)
    bundle: dict[str, Any]  # file name, sha256 and the build it came from
    backend: str
    engine: dict[str, Any]  # tensorrt: the engine section of report.json (and its plan); onnxruntime: the runtime
    host: dict[str, Any]  # the machine's name and versions
    gates: list[GateResult] = field(default_factory=list)
    passed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "schema": DEPLOY_SCHEMA,
            "model": self.model,
            "bundle": self.bundle,
            "backend": self.backend,
            "reference": m.reference,
            "candidate": m.candidate,
            "samples": m.samples,
            **m.metrics.to_dict(),
            "engine": self.engine,
            "host": self.host,
            "timings_s": m.timings,
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed if self.passed is not None else all(g.passed for g in self.gates),
        }


@dataclass
class DeployResult:
    out: Path
    report: dict[str, Any]  # deploy.json's document
    passed: bool
    failures: list[str]
    typed: DeployReport = field(repr=False)


def default_out(bundle: Path) -> Path:
    """``model.rcb`` -> ``model.deploy/`` beside it."""
    return Path(bundle).with_suffix(".deploy")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
    for dist in ("rescompile", "onnx", "onnxruntime", "tensorrt"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _host() -> dict[str, Any]:
    """Name and versions; on a Jetson also its module, power mode and clocks (with warnings when not MAXN / not locked)."""
    from rescompile.engine.jetson import module_model, power_state

    host: dict[str, Any] = {"name": platform.node(), **_versions()}
    state = power_state()
    if state is not None:
        host["jetson"] = {"module": module_model(), **state.to_dict()}
    return host


def resolve_target(name: str) -> Any:
    """``auto``: the generic profile of this GPU's compute capability (``sm_XY``); else a named target."""
    from rescompile.engine.targets import get_target

    if name != "auto":
        return get_target(name)
    from rescompile.engine.device import require_gpu

    cc = require_gpu().compute_capability
    return get_target(f"sm_{cc[0]}{cc[1]}")


def engine_options(opts: DeployOptions) -> Any:
    """The engine deploy builds: batches (1, ``opts.batch``) with opt = ``opts.batch``, the batch validation runs and
    the inspector sees (kernels are tuned for what runs); DLA: batch 1 only (static shapes)."""
    from rescompile.engine.settings import EngineOptions

    batches = (1,) if opts.dla_core is not None else tuple(sorted({1, opts.batch}))
    return EngineOptions(dla_core=opts.dla_core, batches=batches, opt_batch=max(batches), rest_precision=opts.rest_precision)


def _run_tensorrt(bundle: Any, opts: DeployOptions, out: Path) -> tuple[Any, dict[str, Any], list[Any]]:
    """Build on this GPU with the engine layer; (runner, engine report section, the engine's gates)."""
    from rescompile.engine.device import load_tensorrt
    from rescompile.engine.tensorrt import build_engine
    from rescompile.errors import MissingDependency

    try:
        load_tensorrt()  # exit 3 before anything else
    except MissingDependency as exc:
        raise MissingDependency(
            f"TensorRT is not available on this machine: {exc.message}",
            hint=(exc.hint or "deploy on the device (JetPack ships TensorRT)")
            + "; or pass --backend onnxruntime to run the same flow on this CPU",
        ) from None
    target = resolve_target(opts.target)
    result = build_engine(bundle.file(INT8_ONNX), target, engine_options(opts), out)
    from rescompile.runtime.tensorrt_runner import TensorRTRunner

    section = {**result.section(target.name), "plan": result.plan.name}
    return TensorRTRunner(result.plan, cuda_lib=opts.cuda_lib, dla_core=opts.dla_core), section, engine_gates(result)


def _run_onnxruntime(bundle: Any, opts: DeployOptions, out: Path) -> tuple[Any, dict[str, Any], list[Any]]:
    from rescompile.errors import MissingDependency

    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependency(f"onnxruntime cannot be imported ({exc})", hint="pip install onnxruntime") from None
    from rescompile.runtime.runners import open_runner

    # the bundle's own copy first: a damaged model (anyone can re-make the hashes) is exit 2 before anything is written
    runner = open_runner(bundle.file(INT8_ONNX), threads=opts.threads, name="onnxruntime-int8")
    from rescompile.io import write_bytes_atomic

    write_bytes_atomic(out / INT8_ONNX, bundle.file(INT8_ONNX).read_bytes())  # whole or not at all (a dropped ssh link)
    return runner, {"onnxruntime_version": onnxruntime.__version__, "providers": ["CPUExecutionProvider"]}, []


def _check_reference_fits(bundle: Any, ref: Any) -> None:
    """The bundled model reads and takes the bundled reference inputs (C, H, W); else a UsageError before any work."""
    from rescompile.readers import read_onnx

    model = read_onnx(bundle.file(INT8_ONNX))
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    want, got = dims[1:], list(ref.inputs.shape[1:])
    if len(inputs) != 1 or len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=True)):
        raise UsageError(
            f"{bundle.source}: the reference inputs are {got} (C, H, W) but the model takes {want}",
            hint="recreate the bundle with `rescompile bundle`",
        )


def deploy(bundle_path: Path, opts: DeployOptions | None = None) -> DeployResult:
    """Build (or open) the model of a bundle on this machine and validate it against the bundled FP32 logits.

    Args:
        bundle_path: the ``.rcb`` file.
        opts: backend, target, DLA core, output folder.

    Returns:
        The DeployResult (reports already written).

    Raises:
        UsageError: an unsafe or damaged bundle, an unknown backend or target (exit 2).
        MissingDependency: ``backend="tensorrt"`` without TensorRT or a GPU (exit 3).
        GateFailed: a bundled gate (or the residual-fusion check) failed; reports are written first (exit 1).
    """
    from rescompile.deploy.bundle import open_bundle
    from rescompile.validate.metrics import compare_outputs

    opts = opts or DeployOptions()
    _check_options(opts)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rescompile-bundle-") as tmp:
        bundle = open_bundle(Path(bundle_path), Path(tmp))
        gates = _device_gates(bundle.gates, opts)
        ref = bundle.reference()
        _check_reference_fits(bundle, ref)
        timings["unpack"] = round(time.perf_counter() - t0, 3)
        out = Path(opts.out) if opts.out is not None else default_out(Path(bundle_path))
        out.mkdir(parents=True, exist_ok=True)
        runner, engine, extra, logits = _open_and_infer(bundle, opts, out, ref.inputs, timings)
        manifest = bundle.manifest
        onnx_sha = manifest["members"][INT8_ONNX]["sha256"]
    metrics = compare_outputs(ref.logits, logits.astype(np.float32), ref.labels)
    measurement = Measurement(
        source=Path(bundle_path).name,
        samples=int(len(logits)),
        reference=ref.runner,
        candidate=runner.name,
        baseline=None,
        accuracy=metrics.accuracy,
        agreement=metrics.agreement,
        per_class=metrics.per_class,
        timings=timings,
    )
    report = DeployReport(
        measurement,
        model=manifest["model"],
        bundle={"file": Path(bundle_path).name, "sha256": bundle.sha256, "build": manifest.get("build", {})},
        backend=opts.backend,
        engine=engine,
        host=_host(),
    )
    verdict = judge(report, gates, extra)  # the gate path of build and validate
    doc = _write_reports(out, report)
    if opts.backend == "onnxruntime":
        _write_ort_sidecar(out, onnx_sha, bundle.sha256, report)
    result = DeployResult(out, doc, verdict.passed, verdict.failures, report)
    error = verdict.failure(f"\nreport: {out / DEPLOY_REPORT}", result=result, where=" on this device")
    if error is not None:
        raise error
    return result


def _check_options(opts: DeployOptions) -> None:
    """A UsageError for an unknown backend, or a DLA core without TensorRT or a named Jetson target."""
    if opts.backend not in BACKENDS:
        raise UsageError(f"unknown backend {opts.backend!r}", hint="tensorrt (on the device) or onnxruntime (CPU)")
    if opts.dla_core is not None and opts.backend != "tensorrt":
        raise UsageError("--dla-core needs --backend tensorrt")
    if opts.dla_core is not None and opts.target == "auto":
        # The compute capability does not tell Orin modules apart (AGX Orin and Orin NX have DLA, Orin Nano has none).
        raise UsageError(
            "--dla-core needs a named Jetson target, e.g. --target jetson-agx-orin",
            hint="rescompile targets lists them with their DLA cores",
        )


def _open_and_infer(
    bundle: Any, opts: DeployOptions, out: Path, x: np.ndarray, timings: dict[str, float]
) -> tuple[Any, dict[str, Any], list[Any], np.ndarray]:
    """Build the engine (or open the session), run it on ``x`` in ``opts.batch`` batches and close it; the runner,
    its report section, its extra gates and the logits. Adds the ``engine``/``session`` and ``validate`` timings."""
    t1 = time.perf_counter()
    run = _run_tensorrt if opts.backend == "tensorrt" else _run_onnxruntime
    runner, engine, extra = run(bundle, opts, out)
    try:
        timings["engine" if opts.backend == "tensorrt" else "session"] = round(time.perf_counter() - t1, 3)
        t2 = time.perf_counter()
        logits = np.concatenate([runner.infer(x[s : s + opts.batch]) for s in range(0, len(x), opts.batch)])
        timings["validate"] = round(time.perf_counter() - t2, 3)
    finally:  # the TensorRT runner releases its engine before its CUDA context (pycuda: the primary one)
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    return runner, engine, extra, logits


def _write_reports(out: Path, report: DeployReport) -> dict[str, Any]:
    """``deploy.json``, ``deploy.md`` and ``junit.xml`` in ``out``; the report's document."""
    from rescompile.io import write_json, write_text_atomic
    from rescompile.report.junit import render_junit

    doc = report.to_dict()
    write_json(out / DEPLOY_REPORT, doc)
    write_text_atomic(out / DEPLOY_REPORT_MD, render_deploy_md(report))
    junit = render_junit(report.measurement, report.gates, model=str(report.model.get("name", "model")), suite="rescompile.deploy")
    write_text_atomic(out / JUNIT_XML, junit)
    return doc


def _write_ort_sidecar(out: Path, onnx_sha: str, bundle_sha: str, report: DeployReport) -> None:
    """The ONNX Runtime backend's sidecar: which model it ran (and whether the copy in ``out`` still matches), where."""
    from rescompile.io import sha256_file, write_json

    write_json(
        out / ORT_SIDECAR,
        {
            "schema": "rescompile.ortmodel/1",
            "onnx_sha256": onnx_sha,
            "onnx_sha256_checked": sha256_file(out / INT8_ONNX) == onnx_sha,
            "bundle_sha256": bundle_sha,
            "runtime": report.engine,
            "host": report.host,
        },
    )


def _device_gates(gates: Gates, opts: DeployOptions) -> Gates:
    """The bundle's gates with this run's ``--gate-mode`` and ``--no-default-gates`` on top (UsageError for a bad mode)."""
    from rescompile.validate.gates import check_mode

    gates = replace(gates, mode=opts.gate_mode or gates.mode, default_floor=False if opts.no_default_gates else gates.default_floor)
    check_mode(gates)
    return gates


def render_deploy_md(report: DeployReport) -> str:
    """A short Markdown summary of a deploy report; its gates table is report.md's."""
    from rescompile.report.markdown import gate_rows

    m = report.measurement
    acc, agr = m.accuracy, m.agreement

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}%"

    lines = [
        f"# rescompile deploy: {report.model.get('name', 'model')} on {report.host['name']} ({report.backend})",
        "",
        f"**{'PASSED' if report.passed else 'FAILED'}** — {m.samples} bundled reference inputs, candidate {m.candidate} vs {m.reference}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 FP32 (bundled) | {pct(acc.reference.top1)} |",
        f"| top-1 candidate | {pct(acc.candidate.top1)} |",
        f"| top-1 agreement | {pct(agr.top1)} |",
        f"| logit cosine mean / min | {agr.cosine_mean:.5f} / {agr.cosine_min:.5f} |",
        f"| max abs error | {agr.max_abs_error:.4g} |",
        "",
        "## Gates",
        "",
    ]
    lines += gate_rows(report.gates) if report.gates else ["- none bundled"]
    lines += ["", f"bundle sha256 `{report.bundle['sha256']}`", "", "```json", json.dumps(report.host, indent=1), "```", ""]
    return "\n".join(lines)
