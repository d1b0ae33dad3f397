"""Measure the demo build: wall time (median of N), accuracy on the shipped 2,000 and the full
10,000 Fashion-MNIST test images, ONNX Runtime CPU latency FP32 vs INT8, artifact sizes.

    python benchmarks/demo_build.py --repeats 3      # writes benchmarks/results/demo_build.{md,json}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rescompile.data.fashion_mnist import load_fashion_mnist

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rescompile-demo-bench-"))
    walls = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        subprocess.run(["rescompile", "build", "--out", str(tmp / f"b{i}"), "-q"], check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    report = json.loads((tmp / "b0" / "report.json").read_text())
    manifest = json.loads((tmp / "b0" / "manifest.json").read_text())

    images, labels = load_fashion_mnist("test")
    full = tmp / "test10k.npz"
    np.savez(full, images=images, labels=labels)
    subprocess.run(
        ["rescompile", "build", "--val", str(full), "--out", str(tmp / "full"), "-q", "--latency-runs", "3"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    full_report = json.loads((tmp / "full" / "report.json").read_text())

    result = {
        "build_wall_s": {"runs": [round(w, 2) for w in walls], "median": round(statistics.median(walls), 2)},
        "timings_s": manifest["timings_s"],
        "val2000": {
            "fp32_top1": report["accuracy"]["reference"]["top1"],
            "int8_top1": report["accuracy"]["candidate"]["top1"],
            "agreement": report["agreement"]["top1"],
            "cosine_mean": report["agreement"]["cosine_mean"],
        },
        "test10k": {
            "fp32_top1": full_report["accuracy"]["reference"]["top1"],
            "int8_top1": full_report["accuracy"]["candidate"]["top1"],
            "agreement": full_report["agreement"]["top1"],
        },
        "latency": report["latency"],
        "artifact_bytes": {k: v["bytes"] for k, v in manifest["artifacts"].items()},
        "versions": manifest["versions"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_build.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Demo build (`python benchmarks/demo_build.py`)",
        "",
        f"Build wall time: median {result['build_wall_s']['median']} s of {result['build_wall_s']['runs']}.",
        "",
        "| set | FP32 top-1 | INT8 top-1 | agreement |",
        "|---|---|---|---|",
        *[
            f"| {label} | {r['fp32_top1']:.2f}% | {r['int8_top1']:.2f}% | {r['agreement']:.2f}% |"
            for label, r in (("shipped 2,000", result["val2000"]), ("full 10,000", result["test10k"]))
        ],
        "",
        "| runner | batch | p50 ms | p90 ms |",
        "|---|---|---|---|",
        *[f"| {x['runner']} | {x['batch']} | {x['p50_ms']:.2f} | {x['p90_ms']:.2f} |" for x in result["latency"]],
        "",
        "| artifact | bytes |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in result["artifact_bytes"].items()],
    ]
    (RESULTS / "demo_build.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"(python {sys.version.split()[0]}, artifacts in {tmp})")


if __name__ == "__main__":
    main()
