"""Run the stages in order; write the manifest, timings and progress.

The build is staged in a sibling temporary folder and published whole at the end by
:mod:`rescompile.publish` (a build that misses a gate goes to ``<out>.failed``); the folder
layout and the manifest's reader are :mod:`rescompile.buildfolder`.
"""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rescompile.buildfolder import (
    ARTIFACTS,
    CALIB_STATS,
    ENGINE_ARTIFACTS,
    MANIFEST,
    MANIFEST_SCHEMA,
    RANGES,
    failed_path,
    open_build,
)  # fmt: skip
from rescompile.config import BuildConfig
from rescompile.errors import GateFailed, UsageError, VerificationError
from rescompile.io import save_onnx, sha256_file, write_bytes_atomic, write_json, write_text_atomic
from rescompile.publish import check_out, staged

__all__ = ["ARTIFACTS", "ENGINE_ARTIFACTS", "BuildResult", "build", "versions"]

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    out: Path
    report: dict[str, Any]
    manifest: dict[str, Any]
    passed: bool
    failures: list[str] = field(default_factory=list)


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxsim
    import torch

    import rescompile

    return {
        "rescompile": rescompile.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__, "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": np.__version__, "python": platform.python_version(),
    }  # fmt: skip


def _previous_build(out: Path) -> Path | None:
    """``out`` when it holds a build whose calibration files match its manifest (for cache reuse), else None."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        previous = open_build(out, allow_failed=True)
        for name in (RANGES, CALIB_STATS):
            if previous.has(name):
                previous.file(name)
    except UsageError as exc:
        log.info("not reusing calibration from %s: %s", out, exc.message)
        return None
    return out


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - t0, 3)


def build(cfg: BuildConfig | None = None, **overrides: Any) -> BuildResult:
    """Run every stage: load, export, simplify, plan, calibrate, quantize, verify, validate.

    Args:
        cfg: the build configuration; keyword ``overrides`` replace its fields
            (``rescompile.build(model="resnet20", weights=Path("ckpt.pt"))``).

    Returns:
        The BuildResult; ``passed`` is False when a gate failed (the CLI then exits 1).

    Raises:
        RescompileError subclasses for bad input (exit 2), missing dependencies (3),
        parity or verification failures (1).
    """
    from dataclasses import replace

    from rescompile.data.holdout import check_label_gates, choose_data
    from rescompile.data.layout import data_layout
    from rescompile.data.preprocess import load_recipe, resolve_preprocess
    from rescompile.data.sources import check_shape
    from rescompile.quantize.registry import parse_policy
    from rescompile.validate.gates import check_build_gates

    cfg = replace(cfg or BuildConfig(), **overrides)
    policy = parse_policy(cfg.policy, cfg.backend).name  # "auto": the backend's policy; checked before any work
    check_build_gates(cfg)  # thresholds, gate batch, auto-fallback and reference options: exit 2 before any work
    if cfg.backend not in ("onnxruntime", "tensorrt"):
        raise UsageError(f"unknown backend {cfg.backend!r}", hint="onnxruntime or tensorrt")
    engine_target = None
    if cfg.backend == "tensorrt":  # target, TensorRT and GPU are checked before any work (exit 2 / 3)
        from rescompile.engine.tensorrt import preflight

        engine_target = preflight(cfg.target)
    if cfg.out is not None:
        check_out(Path(cfg.out))  # --out can be published to: exit 2 before any work (again, by staged(), at the end)
    recipe = load_recipe(cfg.recipe) if cfg.recipe is not None else {}
    layout = data_layout(cfg.layout, recipe)
    # no --val: demo-val for the demo model, else a held-out split of --calib or (too small) in-sample
    data = choose_data(cfg.model, cfg.calib, cfg.val, layout=layout, calib_size=cfg.calib_size,
                       val_size=cfg.val_size, seed=cfg.seed)  # fmt: skip
    check_label_gates(cfg.gates, data)  # --max-top1-drop without labels: exit 2 before any work (and heavy imports)
    log.info("validation: %s", data.describe())
    calib_src, val_src = data.calibration, data.val

    from rescompile.calibrate.run import calibrate
    from rescompile.export import ExportConfig, export_onnx
    from rescompile.graph.verify import verify_int8
    from rescompile.models import load_model
    from rescompile.progress import progress
    from rescompile.quantize import insert_qdq, plan_qdq
    from rescompile.simplify import SimplifyConfig, simplify
    from rescompile.validate.notes import latency_notes
    from rescompile.validate.run import BuildValidator

    timer = Timer()
    with timer.stage("load"):
        loaded = load_model(cfg.model, weights=cfg.weights, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                            input_size=cfg.input_size, trust_checkpoint=cfg.trust_checkpoint)  # fmt: skip
        pre = resolve_preprocess(loaded.preset, loaded.input_shape, preset=cfg.preset, recipe=recipe, size=cfg.pre_size,
                                 resize=cfg.resize, mean=cfg.mean, std=cfg.std, channels=cfg.pre_channels,
                                 channel_order=cfg.channel_order)  # fmt: skip
        for src in (calib_src, val_src):
            check_shape(src, pre, loaded.input_shape)
    out = Path(cfg.out) if cfg.out is not None else Path("build") / loaded.name
    check_out(out)

    with staged(out) as stage:
        opset_conversion, batch_freed = None, None
        with timer.stage("export"):
            if loaded.module is not None:
                fp32, export_parity = export_onnx(loaded.module, loaded.input_shape,
                                                  ExportConfig(opset=cfg.opset, exporter=cfg.exporter))  # fmt: skip
                export_err: float | None = export_parity.max_abs_error
            else:
                from rescompile.models.onnx_source import free_batch, read_onnx, upgrade_opset

                # below opset 13: converted; a fixed batch: made dynamic; each parity-checked on ONNX Runtime or refused (exit 2)
                fp32, opset_conversion = upgrade_opset(read_onnx(loaded.onnx_path), loaded.onnx_path, loaded.input_shape)  # type: ignore[arg-type]
                fp32, batch_freed = free_batch(fp32, loaded.onnx_path, loaded.input_shape)  # type: ignore[arg-type]
                export_err = None
            save_onnx(stage / "model.fp32.onnx", fp32)
        with timer.stage("simplify"):
            simp = simplify(fp32, loaded.input_shape, SimplifyConfig())
            save_onnx(stage / "model.simplified.onnx", simp.model)
        with timer.stage("plan"):
            plan = plan_qdq(simp.model, policy, keep_fp=cfg.keep_fp, keep_first_last=cfg.keep_first_last)
            write_text_atomic(stage / "qdq_plan.json", plan.to_json())
        with timer.stage("calibrate"):  # reuses the previous build's ranges/statistics when their key matches
            with progress("calibrate", calib_src.count, cfg.progress) as advance:
                calib_run = calibrate(simp.model, plan.calibrated_tensors, calib_src, pre, method=cfg.calib_method,
                                      percentile=cfg.percentile, batch_size=cfg.batch_size, threads=cfg.threads,
                                      previous=_previous_build(out), on_batch=advance, ray=cfg.ray_settings())
            calib = calib_run.result
            write_text_atomic(stage / "ranges.json", calib_run.ranges_json)
            write_bytes_atomic(stage / "calib_stats.npz", calib_run.stats_npz)
        with timer.stage("quantize"):
            int8 = insert_qdq(simp.model, plan, calib.ranges)
            save_onnx(stage / "model.int8.onnx", int8)
            proof = verify_int8(simp.model, int8, plan)
            if not proof.ok:
                raise VerificationError("the INT8 graph breaks the placement rules:\n  " +
                                        "\n  ".join(str(v) for v in proof.violations[:10]))  # fmt: skip
        validator = BuildValidator(loaded.module if loaded.module is not None else simp.model, simp.model, val_src, pre, cfg)
        if cfg.auto_fallback:
            with timer.stage("fallback"):  # before the engine stage: the engine is built from the final model
                fallback = validator.fallback(int8, plan, calib.ranges)
                if fallback.steps:
                    int8, plan = fallback.model, fallback.plan
                    save_onnx(stage / "model.int8.onnx", int8)
                    write_text_atomic(stage / "qdq_plan.json", plan.to_json())
                    proof = verify_int8(simp.model, int8, plan)
                    if not proof.ok:
                        raise VerificationError("the INT8 graph after auto-fallback breaks the placement rules:\n  " +
                                                "\n  ".join(str(v) for v in proof.violations[:10]))  # fmt: skip
        engine_section, engine_gate = None, None
        if engine_target is not None:
            from rescompile.engine.tensorrt import build_for_pipeline

            with timer.stage("engine"):
                engine_section, engine_gate = build_for_pipeline(
                    stage / "model.int8.onnx", engine_target, (*cfg.latency_batches, cfg.batch_size), stage)
        with timer.stage("validate"):
            report = validator.validate(int8, other_s=sum(timer.stages.values()))
        report["model"] = {"name": loaded.name, "input_shape": list(loaded.input_shape), "num_classes": loaded.num_classes}
        report["stages"] = {
            "export_max_abs_error": export_err, "simplify_max_abs_error": simp.max_abs_error,
            "nodes_before_simplify": simp.nodes_before, "nodes_after_simplify": simp.nodes_after,
            "batchnorms_folded": simp.batchnorms_folded, "residual_adds": len(plan.residual_adds),
            "qdq_activations": len(plan.activations), "qdq_weights": len(plan.weights), "verify": proof.to_dict(),
            "policy": plan.policy, "qdq_biases": len(plan.biases), "kept_fp": plan.kept_fp,
        }  # fmt: skip
        if opset_conversion is not None:
            report["stages"]["opset_conversion"] = opset_conversion.to_dict()
        if batch_freed is not None:
            report["stages"]["batch_made_dynamic"] = batch_freed.to_dict()
        report["validation"] = data.to_dict()
        notes = latency_notes(int8, report["candidate"])
        if notes:
            report["notes"] = notes
        report["warnings"] = [w.to_dict() for w in calib_run.warnings]  # degenerate-data findings (calibrate/checks.py)
        report["calibration"] = {"method": cfg.calib_method, "samples": calib.samples, "source": calib_src.name,
                                 "percentile": cfg.percentile, "reused": calib_run.reused,
                                 "methods_chosen": dict(sorted(Counter(r.method for r in calib.ranges.values()).items()))}
        from rescompile.validate.gates import evaluate_gates
        from rescompile.validate.write import write_reports

        gates = list(evaluate_gates(report, cfg.gates))
        if engine_section is not None:
            report["engine"] = engine_section
            if engine_gate is not None:
                gates.append(engine_gate)
        report["gates"] = [g.to_dict() for g in gates]
        report["passed"] = all(g.passed for g in gates)
        write_reports(stage, report, config=cfg.to_dict())  # report.json, report.md, junit.xml, report.html
        failures = [g.line() for g in gates if not g.passed]  # "FAIL <gate>: <metric> = <value>, threshold <op> <t>"
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "artifacts": {name: {"sha256": sha256_file(stage / name), "bytes": (stage / name).stat().st_size}
                          for name in ARTIFACTS + (ENGINE_ARTIFACTS if engine_section is not None else ())},
            "versions": versions(),
            "config": cfg.to_dict(),
            "policy": plan.policy,
            "preprocess": pre.to_dict(),
            "model_source": loaded.source,
            "data": {"calibration": calib_src.name, "validation": val_src.name,
                     "calibration_sha256": calib.key["data_sha256"],
                     "validation_choice": {**data.to_dict(), "layout": layout}},
            "timings_s": timer.stages,
            "gates": {"passed": not failures, "failed": [g.name for g in gates if not g.passed]},
        }  # fmt: skip
        write_json(stage / MANIFEST, manifest)
        if failures:  # published to <out>.failed by staged(); <out> keeps the previous passing build
            result = BuildResult(failed_path(out), report, manifest, False, failures)
            err = GateFailed(f"{len(failures)} of {len(gates)} gate(s) failed:\n  " + "\n  ".join(failures) +
                             f"\nthis build is in {result.out}/ (report and model); {out}/ keeps the previous passing build")  # fmt: skip
            err.result = result  # type: ignore[attr-defined]
            raise err
    return BuildResult(out, report, manifest, True, [])
