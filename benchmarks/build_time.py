"""Where a default build of a large model spends its time: torchvision ResNet-50 (random weights, 224x224),
64 random calibration and 64 random validation inputs, every option at its default.

Runs ``python -m rescompile.cli build`` from the checkout this script lives in, under the benchmark lock
(the machine is shared), and records the wall time, the manifest's stage split (``timings_s``), the
validation report's own split and the latency runs actually made:

    flock /tmp/rescompile-bench.lock python benchmarks/build_time.py --label after
    # writes benchmarks/results/build_time_<label>.json; build_time.md is written by hand from those
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def export_resnet50(path: Path, seed: int) -> None:
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="after")
    ap.add_argument("--root", type=Path, default=ROOT, help="The checkout to run (default: this one).")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="Folder for the model, data and build (default: a temp folder).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rescompile-build-time-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "resnet50.onnx"
    if not model.is_file():
        export_resnet50(model, args.seed)
    rng = np.random.default_rng(args.seed)
    for name in ("calib", "val"):
        if not (work / f"{name}.npy").is_file():
            np.save(work / f"{name}.npy", rng.standard_normal((args.samples, 3, 224, 224), dtype=np.float32))
    out = work / f"build-{args.label}"
    cmd = [sys.executable, "-m", "rescompile.cli", "build", str(model), "--calib", str(work / "calib.npy"),
           "--val", str(work / "val.npy"), "--out", str(out), "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(args.root)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=args.root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"build failed (exit {proc.returncode}):\n{proc.stderr}")
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    result = {
        "label": args.label, "command": " ".join(cmd), "exit": proc.returncode, "wall_s": round(wall, 1),
        "timings_s": manifest["timings_s"], "validate_timings_s": report.get("timings_s", {}),
        "latency": [{k: r[k] for k in ("runner", "role", "batch", "runs", "warmup", "p50_ms")} for r in report["latency"]],
        "latency_settings": {k: v for k, v in report["settings"].items() if k.startswith("latency")},
        "notes": report.get("notes", []), "versions": manifest["versions"], "cpus": os.cpu_count(),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"build_time_{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
