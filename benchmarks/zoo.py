"""Model-zoo benchmark: residual families beyond ResNet under every registered placement policy.

For each full-size torchvision model (random weights, seed 0, 10 classes) and each hand-written
block of tests/zoo.py, at a small input (default 3x64x64):

- residual Adds expected (counted from the architecture) and found (graph/topology.py);
- per policy: the stages of a build (plan, ``max`` calibration on N random inputs, Q/DQ insertion)
  and the proof (graph/verify.py), with their seconds (export and simplification timed once);
- INT8 vs FP32 on the same other N random inputs on ONNX Runtime CPU: mean logit cosine and
  top-1 agreement (random weights: a sanity check, not accuracy).

Run it alone on the machine:
    flock /tmp/rescompile-bench.lock python benchmarks/zoo.py
Results: benchmarks/results/zoo.json and zoo.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.topology import write_results  # noqa: E402
from rescompile.graph.topology import find_residual_blocks  # noqa: E402
from rescompile.quantize.registry import policy_names  # noqa: E402
from tests import zoo  # noqa: E402


def run_one(entry: zoo.ZooModel, size: int, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        fp32 = zoo.export_simplified(entry, size)
    except Exception as exc:  # a benchmark row, not a crash of the whole table
        return {"model": entry.name, "family": entry.family, "expected": entry.residual_adds, "error": f"export: {exc}"}
    export_s = time.perf_counter() - t0
    row: dict[str, Any] = {
        "model": entry.name,
        "family": entry.family,
        "expected": entry.residual_adds,
        "found": len(find_residual_blocks(fp32)),
        "nodes": len(fp32.graph.node),
        "export_s": round(export_s, 2),
        "policies": {},
    }
    calib, val = zoo.zoo_inputs(size, n, 0), zoo.zoo_inputs(size, n, 1)
    for policy in policy_names():
        t = time.perf_counter()
        try:
            r = zoo.quantize_and_compare(fp32, policy, calib, val)
        except Exception as exc:
            row["policies"][policy] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        row["policies"][policy] = {
            "proof": "pass" if r.report.ok else f"FAIL ({len(r.report.violations)}: {r.report.violations[0]})",
            "cosine": round(r.cosine, 5),
            "agreement": round(r.agreement, 1),
            "qdq_pairs": r.report.qdq_pairs,
            "fused_adds": sum(b.fused for b in r.plan.residual_adds),  # type: ignore[attr-defined]
            "seconds": round(time.perf_counter() - t, 2),
        }
    print(row, file=sys.stderr, flush=True)
    return row


def render(doc: dict[str, Any]) -> str:
    pols = doc["policies"]
    lines = [
        "# Model zoo: residual Adds, proof and INT8 vs FP32 per placement policy",
        "",
        f"`{doc['command']}` — {doc['date']}, input {doc['input']}, {doc['samples']} calibration and "
        f"{doc['samples']} comparison inputs (random normal), random weights (seed 0), ONNX Runtime CPU.",
        "",
        "Build seconds = plan + calibration + Q/DQ insertion + proof + the comparison run, per policy "
        "(export and simplification once per model, listed apart). Cosine = mean per-sample cosine of "
        "INT8 and FP32 logits; agreement = top-1 agreement with FP32 (random logits: a sanity check).",
        "",
        "| model | family | Adds expected | found | export s | "
        + " | ".join(f"{p} proof | {p} cosine | {p} agree % | {p} fused Adds | {p} s" for p in pols)
        + " |",
        "|---|---|---|---|---|" + "---|" * (5 * len(pols)),
    ]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['family']} | {r['expected']} | error: {r['error']} |")
            continue
        cells = []
        for p in pols:
            x = r["policies"].get(p, {})
            if "error" in x:
                cells.append(f"error: {x['error']} | | | |")
            else:
                cells.append(f"{x['proof']} | {x['cosine']:.4f} | {x['agreement']:.0f} | {x['fused_adds']} | {x['seconds']:.1f}")
        mark = "" if r["found"] == r["expected"] else " (MISMATCH)"
        lines.append(
            f"| {r['model']} | {r['family']} | {r['expected']} | {r['found']}{mark} | {r['export_s']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="input height = width")
    ap.add_argument("--samples", type=int, default=32, help="calibration inputs (and as many comparison inputs)")
    ap.add_argument("--models", default="", help="comma-separated names (default: all of tests/zoo.py FULL)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    wanted = {m for m in args.models.split(",") if m}
    rows = [run_one(e, args.size, args.samples) for e in zoo.FULL if not wanted or e.name in wanted]
    cmd = f"python benchmarks/zoo.py --size {args.size} --samples {args.samples}" + (f" --models {args.models}" if wanted else "")
    doc = {
        "schema": "rescompile.bench.zoo/1",
        "command": cmd,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "input": f"1x3x{args.size}x{args.size}",
        "samples": args.samples,
        "policies": policy_names(),
        "rows": rows,
    }
    write_results(args.out, "zoo", doc, render)


if __name__ == "__main__":
    main()
