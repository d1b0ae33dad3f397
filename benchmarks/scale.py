"""Scale-out benchmark: one process against 2 Ray workers of one thread each, on this machine.

torchvision resnet50 (``--model``), random weights (seed 0), 224x224, exported and simplified by
rescompile; synthetic seeded uint8 noise images in a .npy file (a path every worker reads), the
``imagenet`` normalization. Random weights and noise are fine for time, not for accuracy.

- calibration of ``--calib`` images (``tensorrt`` policy's tensors, method ``auto``): one process
  with 2 ONNX Runtime threads, then Ray with 2 shards of 1 thread each (local Ray, 2 CPUs, started
  before the clock: its start-up is reported apart); the ranges must be byte-identical.
- validation of ``--val`` images: the FP32 reference (PyTorch) and the INT8 candidate (ONNX
  Runtime) logits: one process with 2 threads (the time to beat), one process with 1 thread, and
  Ray with 2 shards whose runners have 1 thread; the Ray logits must be bit-identical to the
  1-thread process (a shard runs with its runner's thread count, and float reductions are ordered
  by the thread count, so 1 and 2 threads differ in the last bits on resnet50).
- merge cost: ``merge_stats`` of N copies of the collected statistics, for N = 2, 8, 32.

The estimate for N nodes: ``T(N) = per-image cost of one 1-thread worker x images / N + merge(N)
+ ranges``, per-image cost from the Ray run (so it includes Ray's per-task overhead).

Run alone: ``flock /tmp/rescompile-bench.lock nice -n 10 python benchmarks/scale.py``.
Results: benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rescompile, as Ray's workers (started in the current directory) import it
RESULTS = ROOT / "benchmarks" / "results"


def _model(arch: str) -> tuple[Any, Any]:
    import torch
    import torchvision

    from rescompile.export import ExportConfig, export_onnx
    from rescompile.simplify import simplify

    torch.manual_seed(0)
    module = getattr(torchvision.models, arch)(weights=None).eval()
    fp32, _ = export_onnx(module, (3, 224, 224), ExportConfig())
    return module, simplify(fp32, (3, 224, 224)).model


def _images(folder: Path, n: int, seed: int) -> Path:
    path = folder / f"images_{n}_{seed}.npy"
    np.save(path, np.random.default_rng(seed).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--label", default=None, help="suffix of the result files (default: none)")
    args = ap.parse_args()

    import ray

    from rescompile.calibrate.collect import CollectSettings
    from rescompile.calibrate.merge import merge_stats
    from rescompile.calibrate.ranges import calibration_result
    from rescompile.calibrate.run import calibrate
    from rescompile.config import RaySettings
    from rescompile.data.preprocess import PRESETS
    from rescompile.data.sources import open_source
    from rescompile.quantize import insert_qdq, plan_qdq
    from rescompile.runtime.runners import OnnxRuntimeRunner, TorchRunner
    from rescompile.validate.reference import ValidationInputs
    from rescompile.validate.run import ValidateSettings, compute_reference, run_outputs

    out: dict[str, Any] = {
        "model": args.model,
        "calib_images": args.calib,
        "val_images": args.val,
        "batch_size": args.batch_size,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(), "ray": ray.__version__},
    }
    t0 = time.perf_counter()
    module, simp = _model(args.model)
    plan = plan_qdq(simp, "tensorrt")
    out["export_s"] = round(time.perf_counter() - t0, 2)
    pre = PRESETS["imagenet"]
    with tempfile.TemporaryDirectory() as tmp:
        calib_src = open_source(_images(Path(tmp), args.calib, 1))
        val_src = open_source(_images(Path(tmp), args.val, 2))
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        out["ray_start_s"] = round(time.perf_counter() - t0, 2)
        scale = RaySettings(shards=2, threads=1)
        kw: dict[str, Any] = {"method": "auto", "collect": CollectSettings(batch_size=args.batch_size)}

        t0 = time.perf_counter()
        one = calibrate(simp, plan.calibrated_tensors, calib_src, pre, method="auto", collect=CollectSettings(args.batch_size, threads=2))
        out["calib_one_process_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        sharded = calibrate(simp, plan.calibrated_tensors, calib_src, pre, ray=scale, **kw)
        out["calib_ray_2x1_s"] = round(time.perf_counter() - t0, 2)
        out["calib_ranges_identical"] = sharded.ranges_json == one.ranges_json and sharded.stats_npz == one.stats_npz
        assert one.stats is not None
        t0 = time.perf_counter()
        calibration_result(one.stats, "auto", args.calib)
        out["ranges_from_stats_s"] = round(time.perf_counter() - t0, 3)
        merge = {}
        for n in (2, 8, 32):
            t0 = time.perf_counter()
            merge_stats([one.stats] * n)
            merge[str(n)] = round(time.perf_counter() - t0, 4)
        out["merge_s"] = merge
        print(json.dumps(out), flush=True)

        int8 = insert_qdq(simp, plan, one.result.ranges)
        inputs = ValidationInputs.from_source(val_src, pre)
        local = ValidateSettings(batch_size=args.batch_size, threads=2)
        remote = ValidateSettings(batch_size=args.batch_size, ray=scale)
        t0 = time.perf_counter()
        compute_reference(TorchRunner(module, threads=2), inputs, local)
        run_outputs(OnnxRuntimeRunner(int8, "onnxruntime-int8", 2), inputs, local, "candidate")
        out["val_one_process_s"] = round(time.perf_counter() - t0, 2)
        # the shards run with their runner's thread count (1 here): the single-process run to match is the 1-thread one
        t0 = time.perf_counter()
        ref = compute_reference(TorchRunner(module, threads=1), inputs, local)
        cand = run_outputs(OnnxRuntimeRunner(int8, "onnxruntime-int8", 1), inputs, local, "candidate")
        out["val_one_process_1thread_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        ref_r = compute_reference(TorchRunner(module, threads=1), inputs, remote)
        cand_r = run_outputs(OnnxRuntimeRunner(int8, "onnxruntime-int8", 1), inputs, remote, "candidate")
        out["val_ray_2x1_s"] = round(time.perf_counter() - t0, 2)
        out["val_logits_identical"] = bool(np.array_equal(ref.logits, ref_r.logits) and np.array_equal(cand, cand_r))
        ray.shutdown()
    for what, n in (("calib", args.calib), ("val", args.val)):
        per_image = out[f"{what}_ray_2x1_s"] / (n / 2)  # one 1-thread worker's seconds per image, Ray overhead included
        fixed = out["ranges_from_stats_s"] if what == "calib" else 0.0
        out[f"{what}_per_image_1thread_s"] = round(per_image, 4)
        out[f"{what}_estimate_s"] = {
            str(k): round(per_image * n / k + fixed + (merge.get(str(k), merge["32"] * k / 32) if what == "calib" else 0.0), 2)
            for k in (1, 2, 4, 8, 16, 32)
        }
    suffix = f"_{args.label}" if args.label else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scale{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"scale{suffix}.md").write_text(markdown(out))
    print(json.dumps(out, indent=2))


def markdown(r: dict[str, Any]) -> str:
    est = " | ".join(f"{k}: {r['calib_estimate_s'][k]} s / {r['val_estimate_s'][k]} s" for k in r["calib_estimate_s"])
    calib = (
        f"| calibration, {r['calib_images']} images, `auto`, batch {r['batch_size']} | {r['calib_one_process_s']} s | "
        f"{r['calib_ray_2x1_s']} s | ranges.json and calib_stats.npz bytes: {r['calib_ranges_identical']} |"
    )
    val = (
        f"| validation, {r['val_images']} images: FP32 reference (PyTorch) + INT8 candidate logits (ONNX Runtime) | "
        f"{r['val_one_process_s']} s | {r['val_ray_2x1_s']} s | logits bit-identical to the same run in one 1-thread process "
        f"({r['val_one_process_1thread_s']} s): {r['val_logits_identical']} |"
    )
    return f"""# Scale-out on Ray: {r["model"]} (random weights, 224x224), this {r["machine"]["cpus"]}-core machine

Command: `flock /tmp/rescompile-bench.lock nice -n 10 python benchmarks/scale.py --model {r["model"]}`
(Ray {r["machine"]["ray"]}, Python {r["machine"]["python"]}; the machine was shared with other jobs, so the
absolute times are noisy; both ways ran in the same process one after the other.)

| work | one process, 2 threads | Ray, 2 workers x 1 thread | identical results |
|---|---|---|---|
{calib}
{val}

Ray's start-up (local, 2 CPUs) took {r["ray_start_s"]} s, once per process, not counted above.
Overhead Ray adds on one machine: calibration {r["calib_ray_2x1_s"] - r["calib_one_process_s"]:+.1f} s, validation
{r["val_ray_2x1_s"] - r["val_one_process_s"]:+.1f} s (shipping the data set and model to the object store, one session per
task, and two 1-thread workers against one 2-thread process on the same 2 cores).

Per-shard cost (one 1-thread worker, from the Ray run, Ray's per-task overhead included): calibration
{r["calib_per_image_1thread_s"]} s per image, validation {r["val_per_image_1thread_s"]} s per image.
Merge cost of the calibration statistics (`merge_stats`, every calibrated tensor): {r["merge_s"]} s for 2 / 8 / 32 shards;
ranges from the merged statistics: {r["ranges_from_stats_s"]} s. Validation merges by concatenating logits (negligible).

Estimated time on N nodes of one such worker each (`per-image cost x images / N + merge(N) + ranges`;
start-up and data transfer not included), calibration / validation:
{est}.
"""


if __name__ == "__main__":
    main()
