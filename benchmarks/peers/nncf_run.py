"""Quantize one ONNX model with OpenVINO NNCF, in NNCF's own environment (never a rescompile dependency).

    python3.11 -m venv /work/venv-nncf
    /work/venv-nncf/bin/pip install "nncf==3.4.*" onnx onnxruntime numpy
    /work/venv-nncf/bin/python benchmarks/peers/nncf_run.py MODEL.onnx --mode ptq-performance \\
        --calib calib_float.npz --val val_float.npz --out out.onnx

Modes:
  ptq-performance  ``nncf.quantize(preset=PERFORMANCE)``: symmetric weights and activations (NNCF's default
                   for a CNN: ``preset=None`` resolves to PERFORMANCE when ``model_type`` is not TRANSFORMER).
  ptq-mixed        ``nncf.quantize(preset=MIXED)``: asymmetric activations.
  qac              ``nncf.quantize_with_accuracy_control(max_drop=0.01, ABSOLUTE, preset=PERFORMANCE)``: top-1 on
                   the validation split as ``validation_fn`` (returned without per-item values, so NNCF ranks its
                   quantizer groups by output NMSE on the items where INT8 and FP32 differ most, its default).

Calibration uses every image of ``--calib`` (``subset_size`` = its length, batch 1 items). Writes the model and
``<out>.json``: wall time, number of ``validation_fn`` calls and of validation items evaluated (NNCF also calls
``validation_fn`` once per item to collect per-item metrics for its ranking), NNCF version.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


class Counter:
    """``validation_fn`` for NNCF: top-1 of an ONNX model on (input, label) items, counting calls and items."""

    def __init__(self, input_name: str) -> None:
        self.input_name = input_name
        self.calls = 0
        self.items = 0
        self.full_passes = 0
        self.val_len = 0
        self.cached: tuple[onnx.ModelProto, ort.InferenceSession] | None = None

    def __call__(self, model: onnx.ModelProto, data: object) -> tuple[float, None]:
        # NNCF calls this once per item to collect per-item metrics: keep the last session (and the model object,
        # so that its id stays unique while cached)
        if self.cached is None or self.cached[0] is not model:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            self.cached = (model, ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]))
        sess = self.cached[1]
        xs, ys = [], []
        for x, y in data:  # type: ignore[attr-defined]
            xs.append(x)
            ys.append(y)
        self.calls += 1
        self.items += len(xs)
        if len(xs) == self.val_len:
            self.full_passes += 1
        x = np.concatenate(xs)
        pred = np.concatenate([sess.run(None, {self.input_name: x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
        return float(np.mean(pred == np.concatenate(ys))), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--mode", choices=("ptq-performance", "ptq-mixed", "qac"), required=True)
    ap.add_argument("--calib", type=Path, required=True, help=".npz with 'input' (float32 N,C,H,W model inputs)")
    ap.add_argument("--val", type=Path, help=".npz with 'input' and 'labels' (qac only)")
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import nncf

    logging.getLogger("nncf").setLevel(logging.INFO)
    model = onnx.load(str(args.model))
    input_name = model.graph.input[0].name
    with np.load(args.calib) as z:
        calib = z["input"].astype(np.float32)
    calib_ds = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))], lambda x: {input_name: x})
    preset = nncf.QuantizationPreset.MIXED if args.mode == "ptq-mixed" else nncf.QuantizationPreset.PERFORMANCE
    meta: dict[str, object] = {"tool": "nncf", "version": nncf.__version__, "mode": args.mode, "calib_samples": len(calib)}
    t0 = time.perf_counter()
    if args.mode == "qac":
        if args.val is None:
            ap.error("--mode qac needs --val")
        with np.load(args.val) as z:
            vx, vy = z["input"].astype(np.float32), z["labels"].astype(np.int64)
        counter = Counter(input_name)
        counter.val_len = len(vx)
        val_ds = nncf.Dataset([(vx[i : i + 1], vy[i : i + 1]) for i in range(len(vx))], lambda item: {input_name: item[0]})
        out = nncf.quantize_with_accuracy_control(
            model,
            calib_ds,
            val_ds,
            counter,
            max_drop=args.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(calib),
        )
        meta.update(
            validation_fn_calls=counter.calls,
            validation_items=counter.items,
            full_validation_passes=counter.full_passes,
            validation_samples=len(vx),
            max_drop=args.max_drop,
        )
    else:
        out = nncf.quantize(model, calib_ds, preset=preset, subset_size=len(calib))
        meta.update(validation_fn_calls=0, validation_items=0, full_validation_passes=0)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    onnx.save(out, str(args.out))
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
