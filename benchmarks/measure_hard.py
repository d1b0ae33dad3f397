"""Measure INT8 ONNX models of one hard model on the 10k test images, as ``accuracy_hard.py measure`` does.

For builds made outside ``accuracy_hard.py``'s cells (the rows added under "After" in
``benchmarks/results/accuracy_hard.md``)::

    PYTHONPATH=. python benchmarks/measure_hard.py bitv2_outlier OUT/model.int8.onnx [more.onnx ...]

Prints FP32 top-1, then per model: top-1, drop in points with its 95% interval (paired per image), the worst class
drop and the share of Conv/Gemm MACs left in FP (``benchmarks/peers/measure.py``). Needs
``benchmarks/hard_models/work/test10k.npz`` (``accuracy_hard.py data``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from accuracy_hard import MODELS, WORK, paired_drop, worst_class
from measure import evaluate_model, normalize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model of benchmarks/hard_models (its FP32 ONNX is the reference)")
    ap.add_argument("int8", nargs="+", type=Path, help="INT8 ONNX models to measure")
    args = ap.parse_args()
    with np.load(WORK / "test10k.npz") as z:
        x, y = normalize(z["images"]), z["labels"].astype(np.int64)
    fp = evaluate_model(MODELS / f"{args.model}.onnx", x, y, runs=5)
    ref = fp.pop("predictions")
    print(f"{args.model}: FP32 top-1 {fp['top1']:.2f}%")
    for path in args.int8:
        m = evaluate_model(path, x, y, runs=5)
        pred = m.pop("predictions")
        drop, lo, hi = paired_drop(ref, pred, y)
        wc, wdrop = worst_class(ref, pred, y)
        print(
            f"{path}: top-1 {m['top1']:.2f}%, drop {drop:+.2f} [{lo:+.2f}, {hi:+.2f}], "
            f"worst class {wdrop:+.1f} (class {wc}), FP MACs {m['fp_macs_share']:.1%}"
        )


if __name__ == "__main__":
    main()
