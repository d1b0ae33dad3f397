"""Where a default build of a large model spends its time: torchvision ResNet-50 (random weights, 224x224),
64 random calibration and 64 random validation inputs, every option at its default.

Runs ``python -m rescompile.cli build`` from the checkout this script lives in, under the benchmark lock
(the machine is shared), and records the wall time, the manifest's stage split (``timings_s``), the
validation report's own split and the latency runs actually made:

    flock /tmp/rescompile-bench.lock python benchmarks/build_time.py --label after --work /tmp/bt
    python benchmarks/build_time.py --summarize before after   # build_time.md from build_time_<label>.json

``--root`` runs another checkout (e.g. ``git archive main | tar -x -C /tmp/before`` for a "before").

``--source checkpoint`` builds ``torchvision:resnet50 --weights`` a checkpoint of ``resnet50(weights=None)``
saved after ``torch.manual_seed(seed)`` (issue #19 item 10's build: export and its parity check included,
the PyTorch module the FP32 reference before issue 19, its simplified ONNX model since); ``--source onnx`` (the earlier
rounds) builds its ONNX export.
``--ratio`` also times the plain FP32 forward passes over the same 128 inputs (the build's ``model.fp32.onnx``
on ONNX Runtime, the build's intra-op threads, batches of 64, session creation not timed) in a fresh process and
writes the build's wall and CPU time (user+sys, the build's process and its children) over theirs;
``--repeat N`` runs build and forward passes N times, alternately, and keeps the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )


def save_checkpoint(path: Path, seed: int) -> None:
    import torch
    import torchvision

    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)


FORWARD = """
import json, resource, sys, time
import numpy as np
import onnxruntime as ort
model, threads, batch, *files = sys.argv[1:]
opts = ort.SessionOptions()
opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
x = np.concatenate([np.load(f) for f in files])
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu0, t0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
for i in range(0, len(x), int(batch)):
    session.run(None, {session.get_inputs()[0].name: x[i : i + int(batch)]})
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime - cpu0, "samples": len(x)}))
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def forward_passes(model: Path, threads: int, files: list[Path], batch: int = 64) -> dict[str, float]:
    """Plain FP32 ONNX Runtime forward passes over ``files``' inputs in a fresh process: wall and CPU of the runs alone."""
    cmd = [sys.executable, "-c", FORWARD, str(model), str(threads), str(batch), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"forward passes failed:\n{proc.stderr}")
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="after")
    ap.add_argument("--root", type=Path, default=ROOT, help="The checkout to run (default: this one).")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="Folder for the model, data and build (default: a temp folder).")
    ap.add_argument("--policy", default=None, help="Pass --policy to the build (default: the build's default).")
    ap.add_argument("--summarize", nargs="+", metavar="LABEL", help="Write build_time.md from these labels' JSON files.")
    ap.add_argument("--note", default="", help="A paragraph for build_time.md (e.g. the machine's load).")
    ap.add_argument("--source", choices=("onnx", "checkpoint"), default="onnx", help="Build the ONNX export or the checkpoint.")
    ap.add_argument("--ratio", action="store_true", help="Also time the plain FP32 forward passes; write the ratio.")
    ap.add_argument("--repeat", type=int, default=1, help="Runs of the build (and forward passes); the medians are kept.")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, args.note)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="rescompile-build-time-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / ("resnet50.onnx" if args.source == "onnx" else "resnet50_random.pt")
    if not model.is_file():
        (export_resnet50 if args.source == "onnx" else save_checkpoint)(model, args.seed)
    rng = np.random.default_rng(args.seed)
    for name in ("calib", "val"):
        if not (work / f"{name}.npy").is_file():
            np.save(work / f"{name}.npy", rng.standard_normal((args.samples, 3, 224, 224), dtype=np.float32))
    out = work / f"build-{args.label}"
    cmd = [
        sys.executable,
        "-m",
        "rescompile.cli",
        "build",
        *([str(model)] if args.source == "onnx" else ["torchvision:resnet50", "--weights", str(model)]),
        "--calib",
        str(work / "calib.npy"),
        "--val",
        str(work / "val.npy"),
        "--out",
        str(out),
        "-q",
    ]
    if args.policy:
        cmd += ["--policy", args.policy]
    env = {**os.environ, "PYTHONPATH": str(args.root)}
    runs: list[dict[str, float]] = []
    for _ in range(max(1, args.repeat)):
        for old in (out, out.with_name(out.name + ".failed")):  # a previous build's calibration would be reused
            shutil.rmtree(old, ignore_errors=True)
        load = os.getloadavg()[0]
        cpu0, t0 = children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=args.root, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if proc.returncode not in (0, 1):
            sys.exit(f"build failed (exit {proc.returncode}):\n{proc.stderr}")
        run = {"build_wall_s": round(wall, 1), "build_cpu_s": round(cpu, 1), "load_before": load}
        if args.ratio:
            import torch  # the build's intra-op threads: PyTorch's count (rescompile.runtime.runners.default_threads)

            fwd = forward_passes(out / "model.fp32.onnx", torch.get_num_threads(), [work / "calib.npy", work / "val.npy"])
            run |= {"forward_wall_s": round(fwd["wall_s"], 1), "forward_cpu_s": round(fwd["cpu_s"], 1)}
            run |= {"ratio_wall": round(wall / fwd["wall_s"], 2), "ratio_cpu": round(cpu / fwd["cpu_s"], 2)}
        run["load_after"] = os.getloadavg()[0]
        runs.append(run)
        print(json.dumps(run), file=sys.stderr)
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    wall = median["build_wall_s"]
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    result = {
        "label": args.label,
        "command": " ".join(cmd),
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "runs": runs,
        "median": median,
        "timings_s": manifest["timings_s"],
        "validate_timings_s": report.get("timings_s", {}),
        "latency": [{k: r[k] for k in ("runner", "role", "batch", "runs", "warmup", "p50_ms")} for r in report["latency"]],
        "latency_settings": {k: v for k, v in report["settings"].items() if k.startswith("latency")},
        "latency_plan": report.get("latency_plan"),
        "notes": report.get("notes", []),
        "versions": manifest["versions"],
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"build_time_{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def summarize(labels: list[str], note: str = "") -> None:
    runs = [json.loads((RESULTS / f"build_time_{label}.json").read_text()) for label in labels]
    stages = list(dict.fromkeys(k for r in runs for k in r["timings_s"]))
    lines = [
        "# Build time of a default ResNet-50 build (`benchmarks/build_time.py`)",
        "",
        "torchvision resnet50, random weights, 224x224, 64 random calibration and 64 random validation inputs "
        "(`.npy`), every option at its default, 2 CPU cores shared with other jobs (timed under the benchmark lock).",
        "",
        "| stage (manifest `timings_s`, s) | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
        *[f"| {k} | " + " | ".join(f"{r['timings_s'].get(k, 0):.1f}" for r in runs) + " |" for k in stages],
        "| of which latency (report `timings_s.latency_s`) | "
        + " | ".join(f"{r['validate_timings_s'].get('latency_s', 0):.1f}" for r in runs)
        + " |",
        "| **wall** | " + " | ".join(f"**{r['wall_s']:.1f}**" for r in runs) + " |",
        "| latency share of the wall time | "
        + " | ".join(f"{100 * r['validate_timings_s'].get('latency_s', 0) / r['wall_s']:.0f}%" for r in runs)
        + " |",
        "",
        "Latency runs made:",
        "",
    ]
    for r in runs:
        made = ", ".join(f"{x['role']} batch {x['batch']}: {x['runs']} runs + {x['warmup']} warm-up" for x in r["latency"])
        plan = r.get("latency_plan") or r["latency_settings"].get("latency_plan")
        lines.append(
            f"- {r['label']}: {made}; settings {json.dumps(r['latency_settings'])}"
            + (f"; plan {json.dumps(plan)}" if plan and "latency_plan" not in r["latency_settings"] else "")
        )
    if note:
        lines += ["", note]
    (RESULTS / "build_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
