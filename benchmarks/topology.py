"""Skip-add topology benchmark: block map, Q/DQ per policy, file size, ORT CPU latency, INT8 kernel share, accuracy.

For each model (torchvision resnet18 and resnet50 at 224x224 with random weights, and the demo
ResNet-20 on Fashion-MNIST, or a random resnet20 1x28x28 when the demo checkpoint is absent):

- residual Adds found, Q/DQ counts under the ``tensorrt`` and ``onnxruntime`` policies, INT8 file
  size vs FP32, and whether our proof (graph/verify.py) passes;
- ONNX Runtime CPU latency (2 threads, batch 1 and 32, median after warm-up) of FP32, each
  policy, and ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel INT8 weights, UINT8
  asymmetric activations, MinMax) from the same calibration data;
- in ONNX Runtime's optimized graph, the share of the model's Conv and residual Add nodes that
  run as INT8 kernels (QLinearConv / QLinearAdd);
- accuracy (demo: FP32 vs INT8 top-1 on the shipped validation set; random-weight models:
  top-1 agreement and logit cosine vs FP32 on random inputs, a sanity check only).

Run it alone on the machine (timings):
    flock /tmp/rescompile-bench.lock python benchmarks/topology.py
Results: benchmarks/results/topology.json and topology.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.export import ExportConfig, export_onnx
from rescompile.graph.topology import find_residual_blocks
from rescompile.quantize import Policy, insert_qdq, plan_qdq
from rescompile.quantize.verify import verify_int8
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.simplify import simplify
from rescompile.validate.metrics import accuracy, agreement

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "tensorrt", "onnxruntime", "quantize_static")
INT8_CONV = ("QLinearConv", "ConvInteger")
INT8_ADD = ("QLinearAdd",)


def load(name: str) -> dict[str, Any]:
    """The module, input shape, calibration batches, evaluation data and a note on where data came from."""
    import torch
    import torchvision

    from rescompile.models.loader import DEMO_CHECKPOINT, DEMO_INFO

    if name == "demo":
        have_demo = DEMO_CHECKPOINT.is_file() and DEMO_INFO.is_file() and (ROOT / "rescompile/assets/demo_val.npz").is_file()
        if have_demo:
            from rescompile.data.preprocess import get_preset
            from rescompile.data.sources import open_source
            from rescompile.models import load_model

            loaded = load_model("demo")
            pre = get_preset(loaded.preset, size=28, channels=1)
            calib = [x for x, _ in open_source("demo-calib").batches(pre, 64)]
            val = list(open_source("demo-val").batches(pre, 250))
            x_val = np.concatenate([x for x, _ in val])
            y_val = np.concatenate([y for _, y in val])
            return {
                "module": loaded.module,
                "shape": (1, 28, 28),
                "calib": calib,
                "x_eval": x_val,
                "y_eval": y_val,
                "data": f"demo checkpoint; calibration demo_calib.npz ({sum(len(c) for c in calib)} images), "
                f"validation demo_val.npz ({len(x_val)} images)",
            }
        from rescompile.models.resnet_cifar import cifar_resnet

        torch.manual_seed(0)
        module = cifar_resnet("resnet20", 10, 1).eval()
        name_note = "demo checkpoint not present: resnet20 1x28x28 with random weights; random calibration data"
        shape: tuple[int, int, int] = (1, 28, 28)
    else:
        torch.manual_seed(0)
        module = getattr(torchvision.models, name)(weights=None).eval()
        name_note = "random weights (weights=None); random N(0,1) calibration and evaluation data"
        shape = (3, 224, 224)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((16, *shape)).astype(np.float32) for _ in range(2)]
    x_eval = np.random.default_rng(1).standard_normal((32, *shape)).astype(np.float32)
    return {
        "module": module,
        "shape": shape,
        "calib": calib,
        "x_eval": x_eval,
        "y_eval": None,
        "data": name_note + f" ({sum(len(c) for c in calib)} calibration images)",
    }


def quantize_static_model(fp32_path: Path, calib: list[np.ndarray], out: Path) -> onnx.ModelProto:
    """ONNX Runtime's own static quantizer, its fastest setting on x86: QDQ, per-channel S8 weights, U8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: x} for x in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # its "please pre-process" advice is not a result
    quantize_static(
        str(fp32_path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return onnx.load(str(out))


def time_blocks(
    runners: dict[str, OnnxRuntimeRunner], sample: np.ndarray, batch: int, runs: int, budget_s: float
) -> dict[str, dict[str, Any]]:
    """Latency of every variant in two blocks, forward then reverse order (A B C D, D C B A).

    Each block gives each variant 5 warm-up calls (they also let the previous session's
    spinning threads go idle) and half of ``runs`` timed calls; the reversed second block
    cancels a linear drift in machine load. A block stops early (>= 5 runs) past ``budget_s / 2``.
    """
    x = np.ascontiguousarray(np.concatenate([sample] * batch)[:batch])
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for block in (order, order[::-1]):
        for k in block:
            r = runners[k]
            for _ in range(5):
                r.infer(x)
            start = time.perf_counter()
            for i in range((runs + 1) // 2):
                if i >= 5 and time.perf_counter() - start > budget_s / 2:
                    break
                t0 = time.perf_counter()
                r.infer(x)
                times[k].append((time.perf_counter() - t0) * 1000.0)
    out = {}
    for k, ts in times.items():
        t = np.asarray(ts)
        out[k] = {
            "batch": batch,
            "runs": len(t),
            "p50_ms": round(float(np.median(t)), 3),
            "p90_ms": round(float(np.percentile(t, 90)), 3),
            "min_ms": round(float(t.min()), 3),
            "mean_ms": round(float(t.mean()), 3),
        }
    return out


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    inits = {t.name: t for t in model.graph.initializer}
    dq_const = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    return {
        "QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "DequantizeLinear (activations)": sum(n.op_type == "DequantizeLinear" for n in model.graph.node) - len(dq_const),
        "DequantizeLinear (weights)": sum(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq_const),
        "DequantizeLinear (int32 biases)": sum(inits[n.input[0]].data_type == onnx.TensorProto.INT32 for n in dq_const),
    }


def kernel_share(optimized: onnx.ModelProto, convs: int, adds: int) -> dict[str, Any]:
    ops = Counter(n.op_type for n in optimized.graph.node)
    int8_conv = sum(ops[o] for o in INT8_CONV)
    int8_add = sum(ops[o] for o in INT8_ADD)
    return {
        "conv_int8": int8_conv,
        "conv_total": convs,
        "conv_share": round(int8_conv / convs, 3) if convs else None,
        "add_int8": int8_add,
        "add_total": adds,
        "add_share": round(int8_add / adds, 3) if adds else None,
        "optimized_ops": dict(sorted(ops.items())),
    }


def bench_model(name: str, runs: int, budget_s: float, batches: tuple[int, ...], work: Path) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    m = load(name)
    fp32_raw, _ = export_onnx(m["module"], m["shape"], ExportConfig())
    fp32 = simplify(fp32_raw, m["shape"]).model
    fp32_path = work / f"{name}.fp32.onnx"
    onnx.save(fp32, str(fp32_path))
    blocks = find_residual_blocks(fp32)
    convs = sum(n.op_type == "Conv" for n in fp32.graph.node)
    res: dict[str, Any] = {
        "model": name,
        "input_shape": list(m["shape"]),
        "data": m["data"],
        "residual_adds": len(blocks),
        "shortcut_kinds": dict(Counter(b.shortcut_kind for b in blocks)),
        "convs": convs,
        "fp32_bytes": fp32_path.stat().st_size,
        "variants": {},
    }
    models: dict[str, onnx.ModelProto] = {"fp32": fp32}
    for policy in (Policy.TENSORRT, Policy.ONNXRUNTIME):
        t0 = time.perf_counter()
        plan = plan_qdq(fp32, policy)
        ranges = compute_ranges(collect_stats(fp32, plan.calibrated_tensors, m["calib"]), "max")
        int8 = insert_qdq(fp32, plan, ranges)
        proof = verify_int8(fp32, int8, plan)
        path = work / f"{name}.{policy.value}.onnx"
        path.write_bytes(int8.SerializeToString(deterministic=True))
        models[policy.value] = int8
        res["variants"][policy.value] = {
            "qdq": qdq_counts(int8),
            "bytes": path.stat().st_size,
            "size_ratio": round(res["fp32_bytes"] / path.stat().st_size, 2),
            "proof_ok": proof.ok,
            "proof_violations": len(proof.violations),
            "quantize_s": round(time.perf_counter() - t0, 2),
            "adds_fused_by_plan": sum(b.fused for b in plan.residual_adds),
        }
    t0 = time.perf_counter()
    qs = quantize_static_model(fp32_path, m["calib"], work / f"{name}.quantize_static.onnx")
    qs_proof = verify_int8(fp32, qs, policy="onnxruntime")
    models["quantize_static"] = qs
    res["variants"]["quantize_static"] = {
        "qdq": qdq_counts(qs),
        "bytes": (work / f"{name}.quantize_static.onnx").stat().st_size,
        "size_ratio": round(res["fp32_bytes"] / (work / f"{name}.quantize_static.onnx").stat().st_size, 2),
        "proof_ok": qs_proof.ok,
        "proof_violations": len(qs_proof.violations),
        "proof_rules_failed": dict(Counter(v.rule for v in qs_proof.violations)),
        "proof_first_violation": str(qs_proof.violations[0]) if qs_proof.violations else None,
        "quantize_s": round(time.perf_counter() - t0, 2),
    }
    res["variants"]["fp32"] = {"bytes": res["fp32_bytes"]}

    # Accuracy / agreement and the INT8 share of the optimized graph, then latency.
    ref_logits = None
    runners = {}
    for variant in VARIANTS:
        opt_path = work / f"{name}.{variant}.optimized.onnx"
        runner = runners[variant] = OnnxRuntimeRunner(models[variant], variant, threads=2, optimized_path=str(opt_path))
        logits = np.concatenate([runner.infer(m["x_eval"][i : i + 64]) for i in range(0, len(m["x_eval"]), 64)])
        v = res["variants"][variant]
        if variant == "fp32":
            ref_logits = logits
        elif ref_logits is not None:
            agr = agreement(ref_logits, logits)
            v["agreement_top1"] = round(agr.top1, 2)
            v["cosine_mean"] = round(agr.cosine_mean, 5)
        if m["y_eval"] is not None:
            v["top1"] = round(accuracy(logits, m["y_eval"]).top1, 2)  # type: ignore[arg-type]
        v["kernels"] = kernel_share(onnx.load(str(opt_path)), convs, len(blocks))
        v["latency"] = []
    for batch in batches:
        t0 = time.perf_counter()
        lats = time_blocks(runners, m["x_eval"][:1], batch, runs, budget_s)
        for variant, lat in lats.items():
            res["variants"][variant]["latency"].append(lat)
            print(f"   {variant:16s} batch {batch:3d}: p50 {lat['p50_ms']:9.2f} ms ({lat['runs']} runs)", flush=True)
        print(f"   (batch {batch} took {time.perf_counter() - t0:.0f} s)", flush=True)
    for variant in VARIANTS[1:]:
        v = res["variants"][variant]
        v["speedup_vs_fp32"] = {
            str(a["batch"]): round(f["p50_ms"] / a["p50_ms"], 2)
            for a, f in zip(v["latency"], res["variants"]["fp32"]["latency"], strict=True)
        }
    return res


def render(doc: dict[str, Any]) -> str:
    """The results as Markdown."""
    env = doc["environment"]
    lines = [
        "# Skip-add topology benchmark",
        "",
        f"`{doc['command']}`, {doc['date']}.  ",
        f"CPU: {env['cpu']} ({env['cores']} cores visible); ONNX Runtime "
        f"{env['onnxruntime']}, CPU provider, {env['threads']} threads (intra-op; inter-op 1), graph optimization ALL "
        f"(load average {env['loadavg_at_start'][0]} at start, {env['loadavg_at_end'][0]} at end: the machine is shared); "
        f"latency = median (p50) of {doc['runs']} timed runs, measured in two blocks per variant (order A B C D, "
        f"then D C B A, {doc['runs'] // 2} runs each after 5 warm-up runs) so load drift hits all variants alike; "
        f"fewer runs only if a block took over {doc['budget_s'] / 2:.0f} s (the run count is listed).",
        "",
    ]
    for r in doc["models"]:
        v = r["variants"]
        lines += [
            f"## {r['model']} ({'x'.join(map(str, r['input_shape']))})",
            "",
            f"Data: {r['data']}.",
            "",
            f"Residual Adds found: **{r['residual_adds']}** ({', '.join(f'{k}: {n}' for k, n in r['shortcut_kinds'].items())}); "
            f"Conv nodes: {r['convs']}.",
            "",
        ]
        lines += [
            "| variant | Q | DQ act | DQ weights | DQ int32 bias | file size | vs FP32 | proof |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        lines.append(f"| fp32 | | | | | {r['fp32_bytes'] / 1e6:.2f} MB | 1.00x | |")
        for name in VARIANTS[1:]:
            q = v[name]["qdq"]
            proof = (
                "pass"
                if v[name]["proof_ok"]
                else f"fail ({v[name]['proof_violations']}: "
                + ", ".join(f"{k} {n}" for k, n in v[name].get("proof_rules_failed", {}).items())
                + ")"
            )
            lines.append(
                f"| {name} | {q['QuantizeLinear']} | {q['DequantizeLinear (activations)']} | "
                f"{q['DequantizeLinear (weights)']} | {q['DequantizeLinear (int32 biases)']} | "
                f"{v[name]['bytes'] / 1e6:.2f} MB | {v[name]['size_ratio']:.2f}x smaller | {proof} |"
            )
        batches = [lat["batch"] for lat in v["fp32"]["latency"]]
        head = "| variant | " + " | ".join(f"batch {b} p50 (ms) | runs | speedup" for b in batches)
        head += " | Conv as INT8 kernel | residual Add as INT8 kernel | top-1 | top-1 agreement | logit cosine |"
        lines += ["", head, "|---|" + "---:|---:|---:|" * len(batches) + "---:|---:|---:|---:|---:|"]
        for name in VARIANTS:
            x = v[name]
            cells = []
            for lat in x["latency"]:
                sp = x.get("speedup_vs_fp32", {}).get(str(lat["batch"]))
                cells.append(f"{lat['p50_ms']:.1f} | {lat['runs']} | {f'{sp:.2f}x' if sp else '1.00x'}")
            k = x["kernels"]
            top1 = f"{x['top1']:.2f}%" if "top1" in x else "n/a"
            agr = f"{x['agreement_top1']:.2f}%" if "agreement_top1" in x else ""
            cos = f"{x['cosine_mean']:.4f}" if "cosine_mean" in x else ""
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {k['conv_int8']}/{k['conv_total']} | "
                f"{k['add_int8']}/{k['add_total']} | {top1} | {agr} | {cos} |"
            )
        ours, theirs = (Counter(v[k]["kernels"]["optimized_ops"]) for k in ("onnxruntime", "quantize_static"))
        diff = {op: (ours[op], theirs[op]) for op in sorted(set(ours) | set(theirs)) if ours[op] != theirs[op]}
        lines += [
            "",
            "ORT-optimized graphs, onnxruntime policy vs quantize_static: "
            + (
                "identical op counts"
                if not diff
                else "op counts differ only in " + ", ".join(f"{op} ({a} vs {b})" for op, (a, b) in diff.items())
            )
            + f". quantize_static's graph under our proof: {v['quantize_static']['proof_first_violation'] or 'pass'}"
            + (
                " (it folds each ReLU after a Conv/Add into the quantization range and deletes the node)."
                if v["quantize_static"]["proof_violations"]
                else "."
            ),
            "",
        ]
    lines += ["## Targets", ""]
    for t in doc["targets"]:
        lines.append(f"- {'PASS' if t['passed'] else 'FAIL'}: {t['what']} ({t['value']})")
    lines.append("")
    return "\n".join(lines)


def targets(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in models:
        v = r["variants"]
        ort = {lat["batch"]: lat["p50_ms"] for lat in v["onnxruntime"]["latency"]}
        fp = {lat["batch"]: lat["p50_ms"] for lat in v["fp32"]["latency"]}
        qs = {lat["batch"]: lat["p50_ms"] for lat in v["quantize_static"]["latency"]}
        if 32 in ort:
            sp = fp[32] / ort[32]
            out.append(
                {
                    "what": f"{r['model']}: onnxruntime policy >= 2.5x faster than FP32 at batch 32",
                    "value": f"{sp:.2f}x",
                    "passed": sp >= 2.5,
                }
            )
            out.append(
                {
                    "what": f"{r['model']}: onnxruntime policy faster than quantize_static at batch 32",
                    "value": f"{ort[32]:.1f} ms vs {qs[32]:.1f} ms",
                    "passed": ort[32] < qs[32],
                }
            )
        if "top1" in v["onnxruntime"]:
            out.append(
                {
                    "what": f"{r['model']}: onnxruntime policy top-1 >= quantize_static's",
                    "value": f"{v['onnxruntime']['top1']:.2f}% vs {v['quantize_static']['top1']:.2f}%",
                    "passed": v["onnxruntime"]["top1"] >= v["quantize_static"]["top1"],
                }
            )
    return out


def write_results(out: Path, stem: str, doc: dict[str, Any], render_md: Callable[[dict[str, Any]], str]) -> None:
    """``<out>/<stem>.json`` and ``<stem>.md``, and the Markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = render_md(doc)
    (out / f"{stem}.md").write_text(md)
    print(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,demo")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per measurement (after 5 warm-up runs)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="time budget per variant and batch size (>= 10 runs)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import onnxruntime

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    doc: dict[str, Any] = {
        "schema": "rescompile.bench.topology/1",
        "command": "python benchmarks/topology.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "environment": {
            "cpu": cpu + (" (AVX512-VNNI)" if "avx512_vnni" in flags else ""),
            "cores": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "threads": 2,
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "runs": args.runs,
        "budget_s": args.budget_s,
        "models": [],
    }
    batches = tuple(int(b) for b in args.batches.split(","))
    with tempfile.TemporaryDirectory(prefix="rescompile-bench-") as tmp:
        for name in args.models.split(","):
            doc["models"].append(bench_model(name, args.runs, args.budget_s, batches, Path(tmp)))
    doc["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["targets"] = targets(doc["models"])
    write_results(args.out, "topology", doc, render)


if __name__ == "__main__":
    main()
