"""Demo top-1 per calibration method and placement policy on the full 10,000-image Fashion-MNIST test set.

Each cell is a real ``rescompile.build`` of the demo (shipped 512-image calibration set) validated on
the 10,000 test images, read from the Debian package (not shipped with rescompile):

    apt-get install -y dataset-fashion-mnist       # /usr/share/datasets/fashion-mnist/t10k-*.gz
    PYTHONPATH=. python benchmarks/calib_methods_10k.py   # writes benchmarks/results/calib_methods_10k.{md,json}

(``PYTHONPATH=.``: a script's own folder, not the working directory, comes first on ``sys.path``, so
without it an installed rescompile would be measured instead of this checkout.)
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
from rescompile.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from rescompile.errors import GateFailed

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("tensorrt", "onnxruntime")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Folder holding t10k-images-idx3-ubyte.gz.")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=RESULTS / "calib_methods_10k")
    ap.add_argument("--title", default="", help="A label for the table (e.g. 'before the entropy fix').")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rescompile-calib10k-"))
    images, labels = load_fashion_mnist("test", args.root)
    val = tmp / "test10k.npz"
    np.savez(val, images=images, labels=labels)

    rows = []
    for policy in POLICIES:
        for method in args.methods:
            t0 = time.perf_counter()
            try:
                res = rescompile.build(out=tmp / f"{policy}-{method}", val=str(val), calib_method=method, policy=policy,
                                       latency_batches=(1,), latency_runs=3, latency_warmup=1)  # fmt: skip
                report = res.report
            except GateFailed as exc:  # no gates are set, but keep the row if one is
                report = exc.result.report  # type: ignore[attr-defined]
            acc = report["accuracy"]
            rows.append({
                "policy": policy, "method": method, "fp32_top1": acc["reference"]["top1"],
                "int8_top1": acc["candidate"]["top1"], "drop": acc["reference"]["top1"] - acc["candidate"]["top1"],
                "agreement": report["agreement"]["top1"], "methods_chosen": report["calibration"]["methods_chosen"],
                "warnings": len(report.get("warnings", [])), "seconds": round(time.perf_counter() - t0, 1),
            })  # fmt: skip
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"title": args.title, "rescompile": rescompile.__version__, "code": str(Path(rescompile.__file__).parent),
           "samples": int(len(labels)), "rows": rows}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# Demo top-1 per calibration method, full 10,000-image Fashion-MNIST test set{' — ' + args.title if args.title else ''}",
        "", "`python benchmarks/calib_methods_10k.py` (needs `apt-get install -y dataset-fashion-mnist`); calibration "
        "on the shipped 512-image set.", "",
        "| policy | method | FP32 top-1 | INT8 top-1 | drop (points) | agreement | methods chosen |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['policy']} | {r['method']} | {r['fp32_top1']:.2f}% | {r['int8_top1']:.2f}% | {r['drop']:+.2f} | "
          f"{r['agreement']:.2f}% | {', '.join(f'{k} {v}' for k, v in r['methods_chosen'].items())} |" for r in rows],
    ]  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"(python {sys.version.split()[0]}, builds in {tmp})")


if __name__ == "__main__":
    main()
