"""The auto-fallback search, old against new, on a model where INT8 hurts (issue 18 item 3).

The model: the trained demo ResNet-20 (Fashion-MNIST) with a function-preserving rescaling inside
``--blocks`` residual blocks: ``--channels`` output channels of the block's first Conv are multiplied
by ``--factor`` (ReLU commutes with a positive factor) and the matching input channels of the second
Conv divided by it. FP32 logits are unchanged (checked); the per-tensor INT8 scale of each rescaled
activation now serves a few huge channels, as in real CNNs whose channel ranges span orders of
magnitude.

Data: calibration = the 512 demo calibration images (Fashion-MNIST train), validation = the 2,000
demo validation images (what the search sees), held-out test = the other 8,000 Fashion-MNIST test
images (no tool sees them). Each build runs through the CLI with ``PYTHONPATH`` set to the checkout
given (``--old`` / ``--new``), with ``--max-top1-drop 1 --auto-fallback N``; the top-1 drop of each
build's INT8 model is then measured on the held-out images with ONNX Runtime.

    python benchmarks/fallback_search.py --old /work/main --new . --out /tmp/fbbench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MEAN, STD = 0.286, 0.353


def hurt_model(out: Path, blocks: list[int], channels: int, factor: float) -> Path:
    """The demo ResNet-20, simplified, with huge activation channels inside ``blocks`` (function-preserving)."""
    from rescompile.export import ExportConfig, export_onnx
    from rescompile.models import load_model
    from rescompile.simplify import simplify

    loaded = load_model("demo")
    model, _ = export_onnx(loaded.module, loaded.input_shape, ExportConfig())
    fp32 = simplify(model, loaded.input_shape).model
    nodes = {n.name: n for n in fp32.graph.node}
    inits = {t.name: t for t in fp32.graph.initializer}
    for b in blocks:
        c1, c2 = nodes[f"/layers/layers.{b}/conv1/Conv"], nodes[f"/layers/layers.{b}/conv2/Conv"]
        for name, axis, f in ((c1.input[1], 0, factor), (c1.input[2], 0, factor), (c2.input[1], 1, 1.0 / factor)):
            w = numpy_helper.to_array(inits[name]).copy()
            np.moveaxis(w, axis, 0)[:channels] *= f
            inits[name].CopyFrom(numpy_helper.from_array(w.astype(np.float32), name))
    path = out / "hurt.onnx"
    onnx.save(fp32, str(path))
    return path


def data(out: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    from rescompile.data.fashion_mnist import load_fashion_mnist

    assets = Path(__file__).resolve().parents[1] / "rescompile" / "assets"
    calib, val = np.load(assets / "demo_calib.npz"), np.load(assets / "demo_val.npz")
    np.savez(out / "calib.npz", images=calib["images"], labels=calib["labels"])
    np.savez(out / "val.npz", images=val["images"], labels=val["labels"])
    images, labels = load_fashion_mnist("t10k")
    seen = {x.tobytes() for x in val["images"]}
    held = np.array([x.tobytes() not in seen for x in images])
    return out / "calib.npz", out / "val.npz", images[held], labels[held]


def prep(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def logits(model: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from rescompile.runtime.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(onnx.load(str(model)) if isinstance(model, Path) else model, "bench")
    return np.concatenate([runner.infer(x[s : s + 500]) for s in range(0, len(x), 500)])


def build(checkout: Path, model: Path, calib: Path, val: Path, out: Path, extra: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "rescompile.cli", "build", str(model), "--calib", str(calib), "--val", str(val)]
    cmd += ["--preset", "fashion-mnist", "--latency-batch", "1", "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)  # cwd: -m imports from it first
    wall = time.perf_counter() - t0
    folder = out if (out / "report.json").is_file() else Path(f"{out}.failed")
    if not (folder / "report.json").is_file():
        raise SystemExit(f"build failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return {
        "report": json.loads((folder / "report.json").read_text()),
        "manifest": json.loads((folder / "manifest.json").read_text()),
        "folder": folder,
        "exit": res.returncode,
    }, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fallback_bench"))
    ap.add_argument("--blocks", default="0,3,6")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--factor", type=float, default=40.0)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--policy", default="tensorrt")
    ap.add_argument("--gate", default="1")
    ap.add_argument("--units", default="auto,layer")
    ap.add_argument("--skip", default="", help="builds to skip (plain, old), e.g. when rerunning")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = hurt_model(args.out, [int(b) for b in args.blocks.split(",")], args.channels, args.factor)
    calib, val, test_x, test_y = data(args.out)
    x = prep(test_x)
    ref = logits(model, x)
    fp32_top1 = float((ref.argmax(1) == test_y).mean() * 100)
    common = ["--policy", args.policy, "--max-top1-drop", args.gate]
    runs = [("plain", args.new, [])] + [("old", args.old, ["--auto-fallback", str(args.limit)])]
    runs += [(f"new-{u}", args.new, ["--auto-fallback", str(args.limit), "--fallback-unit", u]) for u in args.units.split(",")]
    rows = []
    runs = [r for r in runs if r[0] not in args.skip.split(",")]
    for label, checkout, extra in runs:
        b, wall = build(checkout, model, calib, val, args.out / label, common + extra)
        rep, man = b["report"], b["manifest"]
        int8 = b["folder"] / "model.int8.onnx"
        cand = logits(int8, x)
        top1 = float((cand.argmax(1) == test_y).mean() * 100)
        fb = rep.get("fallback") or {}
        steps = fb.get("steps", [])
        kept = [s for s in steps if s.get("accepted", True)]
        fp_share = (kept[-1]["after"]["fp_macs_share"] if kept else 0.0) if fb else 0.0
        rows.append(
            {
                "build": label,
                "exit": b["exit"],
                "kept": fb.get("kept_fp", []),
                "steps_tried": len(steps),
                "steps_kept": len(kept),
                "fp_macs_share": fp_share,
                "report_top1_drop": rep["accuracy"]["top1_drop"],
                "report_samples": rep["samples"],
                "heldout_top1_drop": fp32_top1 - top1,
                "fallback_s": man["timings_s"].get("fallback"),
                "build_wall_s": round(wall, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    meta = vars(args) | {"old": str(args.old), "new": str(args.new), "out": str(args.out)}
    (args.out / "results.json").write_text(json.dumps({"args": meta, "fp32_heldout_top1": fp32_top1, "rows": rows}, indent=2))
    print(f"FP32 top-1 on {len(x)} held-out images: {fp32_top1:.2f}")
    print("| build | exit | units kept (tried) | FP MACs | drop, report (samples) | drop, 8k held-out | fallback s | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['build']} | {r['exit']} | {r['steps_kept']} ({r['steps_tried']}) | {r['fp_macs_share'] * 100:.1f}% | "
            f"{r['report_top1_drop']:.2f} ({r['report_samples']}) | {r['heldout_top1_drop']:.2f} | "
            f"{r['fallback_s']} | {r['build_wall_s']} |"
        )


if __name__ == "__main__":
    main()
