"""What a lost Ray worker costs: resnet50 calibration (512 images) on a local Ray, undisturbed and with one shard killed.

torchvision resnet50 (random weights, seed 0), seeded uint8 noise images in a .npy file, the
``imagenet`` preset, method ``auto``, 2 shards of 1 thread on a local Ray of 2 CPUs (as
benchmarks/scale.py). The disturbed run kills (SIGKILL) the worker of the first shard to start
``--kill-after`` seconds into it; Ray runs that shard again (``max_retries``). Both runs' ranges and
statistics must be byte-identical to the undisturbed one; the report is the added time.

Run alone: ``flock /tmp/rescompile-bench.lock nice -n 10 python benchmarks/faults.py``.
Results: benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"


def marks_its_pid(fn: Any, marker: str) -> Any:
    """``fn``; the first task to start writes its pid to ``marker`` (so this process can kill it)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()} {time.time()}".encode())
            os.close(fd)
        except FileExistsError:
            pass
        return fn(*args, **kwargs)

    run.__name__ = fn.__name__
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--kill-after", type=float, default=10.0, help="seconds into the first shard")
    args = ap.parse_args()

    import numpy as np
    import ray
    from scale import _model

    from rescompile.calibrate import on_ray as ray_calibrate
    from rescompile.calibrate.collect import CollectSettings
    from rescompile.calibrate.run import calibrate
    from rescompile.config import RaySettings
    from rescompile.data.preprocess import PRESETS
    from rescompile.data.sources import open_source
    from rescompile.quantize import plan_qdq

    _, simp = _model("resnet50")
    plan = plan_qdq(simp, "tensorrt")
    pre = PRESETS["imagenet"]
    out: dict[str, Any] = {"model": "resnet50", "calib_images": args.calib, "shards": 2, "kill_after_s": args.kill_after}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calib.npy"
        np.save(path, np.random.default_rng(1).integers(0, 256, (args.calib, 3, 224, 224), dtype=np.uint8))
        src = open_source(path)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        kw: dict[str, Any] = {"method": "auto", "collect": CollectSettings(batch_size=args.batch_size)}

        t0 = time.perf_counter()
        clean = calibrate(simp, plan.calibrated_tensors, src, pre, ray=RaySettings(shards=2, threads=1), **kw)
        out["undisturbed_s"] = round(time.perf_counter() - t0, 2)

        marker = Path(tmp) / "first.pid"
        real = ray_calibrate.collect_shard
        ray_calibrate.collect_shard = marks_its_pid(real, str(marker))  # type: ignore[assignment]
        killed: dict[str, Any] = {}

        def killer() -> None:
            while not marker.exists() or not marker.read_text().strip():
                time.sleep(0.05)
            pid, started = marker.read_text().split()
            time.sleep(max(0.0, float(started) + args.kill_after - time.time()))
            os.kill(int(pid), signal.SIGKILL)
            killed.update(pid=int(pid), at_s_into_shard=round(time.time() - float(started), 2))

        threading.Thread(target=killer, daemon=True).start()
        settings = RaySettings(shards=2, threads=1)
        t0 = time.perf_counter()
        hit = calibrate(simp, plan.calibrated_tensors, src, pre, ray=settings, **kw)
        out["one_worker_killed_s"] = round(time.perf_counter() - t0, 2)
        ray_calibrate.collect_shard = real  # type: ignore[assignment]
        out["killed"] = killed
        out["retried"] = settings.retried
        out["added_s"] = round(out["one_worker_killed_s"] - out["undisturbed_s"], 2)
        out["ranges_identical"] = hit.ranges_json == clean.ranges_json and hit.stats_npz == clean.stats_npz
        ray.shutdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
