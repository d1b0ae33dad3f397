"""``--equalize`` and ``--bias-correction`` on a trained model whose channel ranges span orders of magnitude.

The model is the demo ResNet-20 (trained on Fashion-MNIST) with the inverse of cross-layer equalization applied
to every Conv -> ReLU -> Conv pair of its simplified graph: output channel ``i`` of the first Conv times ``k_i``,
input channel ``i`` of the second divided by it, ``k_i`` log-uniform over ``--decades`` orders of magnitude
(seeded). The function is unchanged (checked on ONNX Runtime); the per-channel weight and activation ranges now
differ by up to ``10**decades``, as they do in real ImageNet CNNs. Each variant is a real ``rescompile build``
(library call, the demo's 512 shipped calibration images) validated on the full 10,000-image Fashion-MNIST test
set, which no stage sees otherwise:

    apt-get install -y dataset-fashion-mnist              # /usr/share/datasets/fashion-mnist/t10k-*.gz
    PYTHONPATH=. python benchmarks/equalize_outliers.py   # writes benchmarks/results/equalize_outliers.{md,json}

Note: equalization provably undoes a transform of exactly this kind (its scales depend only on ``r1_i * r2_i``,
which the transform leaves unchanged), so this measures that the stage finds and equalizes the pairs of a real
model and what that is worth to INT8, not how it does on ranges that arose in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from rescompile.config import BuildConfig
from rescompile.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from rescompile.export import export_onnx, parity_inputs, run_onnx
from rescompile.graph.equalize import find_pairs, scale_input_channels
from rescompile.models import load_model
from rescompile.pipeline import build
from rescompile.simplify import simplify

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "plain": {},
    "equalize": {"equalize": True},
    "bias-correction": {"bias_correction": True},
    "both": {"equalize": True, "bias_correction": True},
}


def spread(model: onnx.ModelProto, decades: float, seed: int) -> tuple[onnx.ModelProto, int]:
    """The inverse transform on every equalizable pair; the model and the number of pairs."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in out.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}
    rng = np.random.default_rng(seed)
    pairs, _ = find_pairs(out)
    for p in pairs:
        a, b = nodes[p.first], nodes[p.second]
        k = 10.0 ** rng.uniform(-decades / 2, decades / 2, p.channels)
        w1 = numpy_helper.to_array(inits[a.input[1]]).astype(np.float64)
        inits[a.input[1]].CopyFrom(numpy_helper.from_array((w1 * k.reshape(-1, 1, 1, 1)).astype(np.float32), a.input[1]))
        b1 = numpy_helper.to_array(inits[a.input[2]]).astype(np.float64)
        inits[a.input[2]].CopyFrom(numpy_helper.from_array((b1 * k).astype(np.float32), a.input[2]))
        group = next((x.i for x in b.attribute if x.name == "group"), 1)
        w2 = scale_input_channels(numpy_helper.to_array(inits[b.input[1]]).astype(np.float64), group, 1.0 / k)
        inits[b.input[1]].CopyFrom(numpy_helper.from_array(w2.astype(np.float32), b.input[1]))
    return out, len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decades", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", action="append", help="tensorrt and/or onnxruntime (default: both)")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    policies = args.policy or ["tensorrt", "onnxruntime"]
    images, labels = load_fashion_mnist("t10k", args.root)
    loaded = load_model("demo")
    fp32, _ = export_onnx(loaded.module, loaded.input_shape)
    simplified = simplify(fp32, loaded.input_shape).model
    outlier, npairs = spread(simplified, args.decades, args.seed)
    probe = parity_inputs(loaded.input_shape, 8)
    parity = float(np.max(np.abs(run_onnx(outlier, probe) - run_onnx(simplified, probe))))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet20_outliers.onnx"
        onnx.save(outlier, str(path))
        val = Path(tmp) / "t10k.npz"
        np.savez(val, images=images, labels=labels)
        for policy in policies:
            for name, flags in VARIANTS.items():
                t0 = time.perf_counter()
                cfg = BuildConfig.from_flat(
                    model=str(path),
                    preset="fashion-mnist",
                    calib="demo-calib",
                    val=str(val),
                    policy=policy,
                    out=Path(tmp) / f"{policy}-{name}",
                    latency_batches=(1,),
                    latency_runs=3,
                    **flags,
                )
                r = build(cfg).report
                st = r["stages"]
                rows.append(
                    {
                        "policy": policy,
                        "variant": name,
                        "fp32_top1": r["accuracy"]["reference"]["top1"],
                        "int8_top1": r["accuracy"]["candidate"]["top1"],
                        "top1_drop": r["accuracy"]["top1_drop"],
                        "agreement": r["agreement"]["top1"],
                        "cosine_mean": r["agreement"]["cosine_mean"],
                        "pairs_equalized": st.get("equalize", {}).get("pairs_equalized"),
                        "equalize_max_abs_error": st.get("equalize", {}).get("parity", {}).get("max_abs_error"),
                        "layers_corrected": st.get("bias_correction", {}).get("layers_corrected"),
                        "wall_s": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "decades": args.decades,
        "seed": args.seed,
        "pairs_spread": npairs,
        "spread_parity_max_abs_error": parity,
        "test_images": len(labels),
    }
    (args.out / "equalize_outliers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# `--equalize` / `--bias-correction` on the demo ResNet-20 with channel ranges spread over {args.decades:g} decades",
        "",
        f"Made by `benchmarks/equalize_outliers.py` (seed {args.seed}): the inverse of equalization on the {npairs} "
        f"Conv->ReLU->Conv pairs of the trained demo (function unchanged: max |diff| {parity:.2g} on ONNX Runtime); "
        f"calibration: the demo's 512 shipped images; top-1 on the full {len(labels)}-image Fashion-MNIST test set.",
        "",
        "| policy | variant | FP32 top-1 | INT8 top-1 | top-1 drop (pt) | agreement % | mean cosine | pairs equalized "
        "| layers corrected | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['policy']} | {x['variant']} | {x['fp32_top1']:.2f} | {x['int8_top1']:.2f} | {x['top1_drop']:.2f} | "
            f"{x['agreement']:.2f} | {x['cosine_mean']:.5f} | {x['pairs_equalized'] or '-'} | {x['layers_corrected'] or '-'} "
            f"| {x['wall_s']} |"
        )
    (args.out / "equalize_outliers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
