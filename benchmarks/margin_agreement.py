"""Margin-aware agreement and the intervals on real logits: the demo build and random-init zoo models.

For the demo (FP32 and INT8 of a finished build folder, default /tmp/demo_before, on the shipped
2,000-image demo-val set) and for zoo models (tests/zoo.py FULL, random weights, 3x64x64, ``max``
calibration on 32 random inputs, ``tensorrt`` policy, 400 other random inputs):

- plain top-1 agreement with its Clopper-Pearson interval, mean logit cosine;
- margin-aware agreement (rescompile/validate/stats.py, docs/statistics.md): decisive samples,
  decisive flips, the centred relative logit error;
- demo only (labelled): the paired top-1 drop (Tango, bootstrap) and the worst class.

Run it alone on the machine:
    python benchmarks/margin_agreement.py [--build /tmp/demo_before] [--models densenet121,resnet18]
Results: benchmarks/results/margin_agreement.json and margin_agreement.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.topology import write_results  # noqa: E402
from rescompile.validate import stats as S  # noqa: E402

BATCH = 50


def _run(path_or_model: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)]).astype(np.float64)


def _row(name: str, ref: np.ndarray, cand: np.ndarray, seconds: float) -> dict[str, Any]:
    cos = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-30)
    agree = S.agreement_interval(int((ref.argmax(1) == cand.argmax(1)).sum()), len(ref))
    m = S.margin_agreement(ref, cand)
    return {
        "model": name,
        "n": m.n,
        "cosine": float(cos.mean()),
        "agreement": [agree.point, agree.lo, agree.hi],
        "flips": m.flips,
        "decisive": m.decisive,
        "decisive_flips": m.decisive_flips,
        "rel_error": m.rel_error,
        "margin_agreement": None if m.agreement is None else [m.agreement.point, m.agreement.lo, m.agreement.hi],
        "seconds": round(seconds, 1),
    }


def demo_row(build: Path) -> dict[str, Any]:
    from rescompile.data.preprocess import PRESETS
    from rescompile.data.sources import ASSETS

    t = time.perf_counter()
    pre = PRESETS["fashion-mnist"]
    d = np.load(ASSETS / "demo_val.npz")
    x = ((d["images"] / 255.0 - pre.mean[0]) / pre.std[0]).astype(np.float32)[:, None]
    labels = d["labels"]
    ref, cand = _run(str(build / "model.fp32.onnx"), x), _run(str(build / "model.int8.onnx"), x)
    row = _row("demo (trained, Fashion-MNIST)", ref, cand, time.perf_counter() - t)
    pc = S.PairedCounts.from_logits(ref, cand, labels)
    tango, boot = S.top1_drop(pc.ref_only, pc.cand_only, pc.n), S.bootstrap_drop(pc.ref_only, pc.cand_only, pc.n)
    classes = S.per_class_drop(S.class_counts(ref, cand, labels))
    gate = S.decide_classes(classes, 1.0, "confident")
    row["drop"] = {
        "b": pc.ref_only,
        "c": pc.cand_only,
        "tango": [tango.point, tango.lo, tango.hi],
        "bootstrap": [boot.lo, boot.hi],
        "p_exact": tango.p_exact,
        "worst_class": {"label": classes.worst.label, "point": classes.worst.estimate.point, "hi": classes.worst.estimate.hi},
        "class_gate_1pt_samples_to_settle": gate.samples_to_settle,
    }
    return row


def zoo_row(name: str) -> dict[str, Any]:
    from rescompile.calibrate import collect_stats, compute_ranges
    from rescompile.quantize import insert_qdq, plan_qdq
    from tests import zoo

    (entry,) = [e for e in zoo.FULL if e.name == name]
    t = time.perf_counter()
    fp32 = zoo.export_simplified(entry, 64)
    calib, val = zoo.zoo_inputs(64, 32, 0), zoo.zoo_inputs(64, 400, 1)
    plan = plan_qdq(fp32, "tensorrt")
    int8 = insert_qdq(fp32, plan, compute_ranges(collect_stats(fp32, plan.calibrated_tensors, [calib]), "max"))
    return _row(f"{name} (random init)", _run(fp32, val), _run(int8, val), time.perf_counter() - t)


def render(doc: dict[str, Any]) -> str:
    def iv(v: list[float] | None) -> str:
        return "n/a (no decisive sample)" if v is None else f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"

    lines = [
        "# Margin-aware agreement on real logits",
        "",
        f"`{doc['command']}` — {doc['date']}. Agreement and margin-aware agreement in percent with "
        "95% Clopper-Pearson intervals; rel. error = RMS of the centred INT8-FP32 logit error over "
        "the RMS of FP32's centred logits (docs/statistics.md).",
        "",
        "| model | n | cosine | agreement % | flips | decisive | decisive flips | rel. error | margin-aware agreement % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['cosine']:.5f} | {iv(r['agreement'])} | {r['flips']} | {r['decisive']} | "
            f"{r['decisive_flips']} | {r['rel_error']:.3f} | {iv(r['margin_agreement'])} |"
        )
    for r in doc["rows"]:
        if "drop" in r:
            d = r["drop"]
            lines += [
                "",
                f"{r['model']}: b = {d['b']}, c = {d['c']}; top-1 drop {d['tango'][0]:.2f} pt, Tango 95% "
                f"[{d['tango'][1]:.2f}, {d['tango'][2]:.2f}], bootstrap [{d['bootstrap'][0]:.2f}, {d['bootstrap'][1]:.2f}], "
                f"exact McNemar p = {d['p_exact']:.3f}; worst class {d['worst_class']['label']} "
                f"{d['worst_class']['point']:.2f} pt (Bonferroni upper bound {d['worst_class']['hi']:.2f}); a confident "
                f"1 pt class gate would need {d['class_gate_1pt_samples_to_settle']} samples.",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=Path("/tmp/demo_before"), help="a demo build folder")
    ap.add_argument("--models", default="resnet18,mobilenet_v3_large,efficientnet_b0,densenet121")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    rows = [demo_row(args.build)] if (args.build / "model.int8.onnx").is_file() else []
    rows += [zoo_row(m) for m in args.models.split(",") if m]
    doc = {
        "schema": "rescompile.bench.margin_agreement/1",
        "command": f"python benchmarks/margin_agreement.py --models {args.models}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    write_results(args.out, "margin_agreement", doc, render)


if __name__ == "__main__":
    main()
