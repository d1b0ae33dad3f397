"""Demo top-1 per calibration method and placement policy on the full 10,000-image Fashion-MNIST test set.

The stages ``rescompile build`` runs, from the library: the demo is exported and simplified once, each
policy plans and calibrates once on the shipped 512-image calibration set (every method's ranges come
from the same statistics, as a rebuild with another method reuses them), and each INT8 model runs on
ONNX Runtime over the 10,000 test images, read from the Debian package (not shipped with rescompile):

    apt-get install -y dataset-fashion-mnist            # /usr/share/datasets/fashion-mnist/t10k-*.gz
    PYTHONPATH=. python benchmarks/calib_methods_10k.py  # writes benchmarks/results/calib_methods_10k.{md,json}

(``PYTHONPATH=.``: a script's own folder, not the working directory, comes first on ``sys.path``, so
without it an installed rescompile would be measured instead of this checkout.) FP32 top-1 is the
simplified FP32 ONNX model on ONNX Runtime (the build's PyTorch reference gives the same 93.59%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rescompile
from rescompile.calibrate.ranges import METHODS
from rescompile.calibrate.run import calibrate
from rescompile.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from rescompile.data.preprocess import normalize_pixels, resolve_preprocess
from rescompile.data.sources import open_source
from rescompile.export import export_onnx
from rescompile.models import load_model
from rescompile.quantize import insert_qdq, plan_qdq
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.simplify import simplify

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("tensorrt", "onnxruntime")


def top1(model: object, x: np.ndarray, labels: np.ndarray, name: str) -> float:
    runner = OnnxRuntimeRunner(model, name, None)
    logits = np.concatenate([runner.infer(x[i : i + 500]) for i in range(0, len(x), 500)])
    return float(np.mean(logits.argmax(1) == labels) * 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Folder holding t10k-images-idx3-ubyte.gz.")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=RESULTS / "calib_methods_10k")
    ap.add_argument("--title", default="", help="A label for the table (e.g. 'before the entropy fix').")
    args = ap.parse_args()
    images, labels = load_fashion_mnist("test", args.root)
    loaded = load_model("demo")
    fp32, _ = export_onnx(loaded.module, loaded.input_shape)
    simp = simplify(fp32, loaded.input_shape).model
    pre = resolve_preprocess(loaded.preset, loaded.input_shape)
    x = normalize_pixels(images[:, None], pre)
    fp32_top1 = top1(simp, x, labels, "onnxruntime-fp32")
    rows = []
    for policy in POLICIES:
        plan = plan_qdq(simp, policy)
        with tempfile.TemporaryDirectory() as tmp:
            first = None
            for method in args.methods:
                t0 = time.perf_counter()
                prev = Path(tmp) if first is not None else None
                run = calibrate(simp, plan.calibrated_tensors, open_source("demo-calib"), pre, method=method, previous=prev)
                if first is None:  # later methods reuse these statistics, as a rebuild does
                    first = run
                    (Path(tmp) / "ranges.json").write_text(run.ranges_json)
                    (Path(tmp) / "calib_stats.npz").write_bytes(run.stats_npz)
                int8 = insert_qdq(simp, plan, run.result.ranges)
                acc = top1(int8, x, labels, "onnxruntime-int8")
                chosen: dict[str, int] = {}
                for r in run.result.ranges.values():
                    chosen[r.method] = chosen.get(r.method, 0) + 1
                rules: dict[str, int] = {}
                for s in run.result.summary.values():
                    if "entropy_rule" in s:
                        rules[s["entropy_rule"]] = rules.get(s["entropy_rule"], 0) + 1
                rows.append(
                    {
                        "policy": policy,
                        "method": method,
                        "fp32_top1": fp32_top1,
                        "int8_top1": acc,
                        "drop": fp32_top1 - acc,
                        "methods_chosen": dict(sorted(chosen.items())),
                        "entropy_rules": dict(sorted(rules.items())),
                        "warnings": [w.code for w in getattr(run, "warnings", [])],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "title": args.title,
        "rescompile": rescompile.__version__,
        "code": str(Path(rescompile.__file__).parent),
        "samples": int(len(labels)),
        "rows": rows,
    }
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    title = "Demo top-1 per calibration method, full 10,000-image Fashion-MNIST test set"
    lines = [
        f"# {title}{' — ' + args.title if args.title else ''}",
        "",
        "`PYTHONPATH=. python benchmarks/calib_methods_10k.py` (needs `apt-get install -y dataset-fashion-mnist`); "
        "calibration on the shipped 512-image set; INT8 and FP32 on ONNX Runtime.",
        "",
        "| policy | method | FP32 top-1 | INT8 top-1 | drop (points) | methods chosen | entropy rules | warnings |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['policy']} | {r['method']} | {r['fp32_top1']:.2f}% | {r['int8_top1']:.2f}% | {r['drop']:+.2f} | "
            f"{', '.join(f'{k} {v}' for k, v in r['methods_chosen'].items())} | "
            f"{', '.join(f'{k} {v}' for k, v in r['entropy_rules'].items()) or '-'} | {', '.join(r['warnings']) or '-'} |"
            for r in rows
        ],
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"(python {sys.version.split()[0]}, rescompile from {doc['code']})")


if __name__ == "__main__":
    main()
