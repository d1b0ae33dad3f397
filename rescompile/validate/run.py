"""Validation: FP32 reference vs INT8 candidate on the same preprocessed inputs; latency of both."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import onnx

from rescompile.config import BuildConfig
from rescompile.data.preprocess import Preprocess
from rescompile.data.sources import DataSource
from rescompile.progress import progress
from rescompile.runtime.runners import OnnxRuntimeRunner, TorchRunner
from rescompile.validate.latency import measure_latency
from rescompile.validate.metrics import accuracy, agreement, per_class_delta


def validate_models(
    reference: Any, fp32_onnx: onnx.ModelProto, candidate: onnx.ModelProto, source: DataSource,
    pre: Preprocess, cfg: BuildConfig,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy, agreement and latency of ``candidate`` (INT8, ONNX Runtime) against ``reference``.

    Args:
        reference: the FP32 PyTorch module, or an FP32 ONNX model when there is none.
        fp32_onnx: the FP32 simplified ONNX model (latency baseline on the same runtime).
        candidate: the INT8 model.
    """
    ref_runner = (
        OnnxRuntimeRunner(reference, "onnxruntime-fp32", cfg.threads)
        if isinstance(reference, onnx.ModelProto) else TorchRunner(reference, "pytorch-fp32", cfg.threads)
    )  # fmt: skip
    fp32_ort = OnnxRuntimeRunner(fp32_onnx, "onnxruntime-fp32", cfg.threads)
    int8_ort = OnnxRuntimeRunner(candidate, "onnxruntime-int8", cfg.threads)
    ref_out, cand_out, labels = [], [], []
    with progress("validate", source.count, cfg.progress) as advance:
        for x, y in source.batches(pre, cfg.batch_size):
            ref_out.append(ref_runner.infer(x))
            cand_out.append(int8_ort.infer(x))
            if y is not None:
                labels.append(y)
            advance(len(x))
    ref = np.concatenate(ref_out)
    cand = np.concatenate(cand_out)
    lab = np.concatenate(labels) if labels else None
    ref_acc, cand_acc = accuracy(ref, lab), accuracy(cand, lab)
    drop = None if ref_acc.top1 is None or cand_acc.top1 is None else ref_acc.top1 - cand_acc.top1
    sample, _ = next(source.batches(pre, max(cfg.latency_batches)))
    latency = []
    runs = cfg.latency_runs * len(cfg.latency_batches) * 2
    with progress("latency", runs, cfg.progress) as advance:
        for batch in cfg.latency_batches:
            for runner in (fp32_ort, int8_ort):
                latency.append(asdict(measure_latency(runner, sample, batch, runs=cfg.latency_runs,
                                                      on_run=lambda: advance(1))))  # fmt: skip
    speedup = {}
    for batch in cfg.latency_batches:
        f = next(r for r in latency if r["batch"] == batch and r["runner"] == "onnxruntime-fp32")
        i = next(r for r in latency if r["batch"] == batch and r["runner"] == "onnxruntime-int8")
        speedup[str(batch)] = f["p50_ms"] / i["p50_ms"]
    return {
        "schema": "rescompile.report/1",
        "source": source.name,
        "samples": int(len(ref)),
        "reference": ref_runner.name,
        "candidate": int8_ort.name,
        "accuracy": {"reference": asdict(ref_acc), "candidate": asdict(cand_acc), "top1_drop": drop},
        "agreement": asdict(agreement(ref, cand)),
        "per_class": [asdict(d) for d in per_class_delta(ref, cand, lab)] if lab is not None else [],
        "latency": latency,
        "speedup_int8_vs_fp32_p50": speedup,
    }
