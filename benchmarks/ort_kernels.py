"""Where the INT8 time goes in ONNX Runtime: a per-kernel profile of FP32, each INT8 graph, layer by layer.

For each model (the same as benchmarks/topology.py), ONNX Runtime's profiler (2 threads, graph
optimization ALL, batch 32 by default) times every kernel of:

- ``fp32``: the simplified FP32 model;
- ``onnxruntime``: our ``onnxruntime`` placement policy;
- ``quantize_static``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel S8 weights,
  U8 activations, MinMax) on the same calibration data;
- ``onnxruntime, first conv FP32``: our policy with ``--keep-fp`` on the first Conv (the stem),
  the one layer where the INT8 kernel can be slower than the FP32 one (a 1- or 3-channel input
  is a poor fit for the INT8 GEMM).

It writes, per variant, the kernel time by op type and by node (median over the profiled
runs), so the INT8 graphs can be compared kernel for kernel and against FP32 layer by layer.

    flock /tmp/rescompile-bench.lock python benchmarks/ort_kernels.py
Results: benchmarks/results/ort_kernels.json and ort_kernels.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from topology import ROOT, load, quantize_static_model, write_results  # noqa: E402

from rescompile.calibrate import collect_stats, compute_ranges  # noqa: E402
from rescompile.export import ExportConfig, export_onnx  # noqa: E402
from rescompile.graph.index import node_name  # noqa: E402
from rescompile.quantize import insert_qdq  # noqa: E402
from rescompile.quantize.policy_ort import plan_onnxruntime  # noqa: E402
from rescompile.simplify import simplify  # noqa: E402

VARIANTS = ("fp32", "onnxruntime", "quantize_static", "onnxruntime, first conv FP32")


def profile(paths: dict[str, Path], x: np.ndarray, runs: int, work: Path, rounds: int = 4) -> dict[str, dict[str, Any]]:
    """Per variant: median kernel time (ms) per node and per op type, and the wall p50, over ``runs`` runs.

    The variants take turns in ``rounds`` rounds (forward, then reverse order, 5 warm-up runs
    each), so a change in machine load hits every variant alike.
    """
    import onnxruntime as ort

    sessions = {}
    for i, (variant, path) in enumerate(paths.items()):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(work / f"profile{i}")
        sessions[variant] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    wall: dict[str, list[float]] = defaultdict(list)
    order = list(sessions)
    for r in range(rounds):
        for variant in order if r % 2 == 0 else order[::-1]:
            sess = sessions[variant]
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(5):
                sess.run(None, feed)
            for _ in range(-(-runs // rounds)):
                t0 = time.perf_counter()
                sess.run(None, feed)
                wall[variant].append((time.perf_counter() - t0) * 1000.0)
    out = {}
    for variant, sess in sessions.items():
        events = json.loads(Path(sess.end_profiling()).read_text())
        per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_node[(e["name"][: -len("_kernel_time")], e["args"]["op_name"])].append(e["dur"] / 1000.0)
        nodes = [{"node": n, "op": op, "ms": round(float(np.median(v)), 4)} for (n, op), v in per_node.items()]
        by_op: dict[str, float] = defaultdict(float)
        for n in nodes:
            by_op[n["op"]] += n["ms"]
        out[variant] = {
            "wall_p50_ms": round(float(np.median(wall[variant])), 3),
            "runs": len(wall[variant]),
            "kernel_sum_ms": round(sum(by_op.values()), 3),
            "by_op": dict(sorted(((k, round(v, 3)) for k, v in by_op.items()), key=lambda kv: -kv[1])),
            "nodes": nodes,
        }
    return out


def optimized(path: Path, out: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime actually runs (optimization level ALL), as it saves it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def kernel_signatures(model: onnx.ModelProto) -> Counter[str]:
    """Each node as its kernel sees it, names left out: domain, op, attributes, and per input either
    'activation' or the constant's dtype and shape. Counted, so node order does not matter."""
    consts = {t.name: (onnx.TensorProto.DataType.Name(t.data_type), tuple(t.dims)) for t in model.graph.initializer}
    sigs: Counter[str] = Counter()
    for n in model.graph.node:
        attrs = sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute)
        ins = [f"{consts[i][0]}{list(consts[i][1])}" if i in consts else "activation" for i in n.input if i]
        sigs[f"{n.domain or 'ai.onnx'}.{n.op_type}({', '.join(ins)}) {attrs}"] += 1
    return sigs


def compare_kernels(a: onnx.ModelProto, b: onnx.ModelProto) -> dict[str, Any]:
    sa, sb = kernel_signatures(a), kernel_signatures(b)
    return {
        "nodes": [sum(sa.values()), sum(sb.values())],
        "identical": sum((sa & sb).values()),
        "only_ours": sorted((sa - sb).elements()),
        "only_theirs": sorted((sb - sa).elements()),
    }


def bench(name: str, batch: int, runs: int, work: Path) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    m = load(name)
    raw, _ = export_onnx(m["module"], m["shape"], ExportConfig())
    fp32 = simplify(raw, m["shape"]).model
    paths = {"fp32": work / f"{name}.fp32.onnx"}
    onnx.save(fp32, str(paths["fp32"]))
    first_conv = next(node_name(n) for n in fp32.graph.node if n.op_type == "Conv")
    for variant, keep in (("onnxruntime", ()), ("onnxruntime, first conv FP32", (first_conv,))):
        plan = plan_onnxruntime(fp32, keep_fp=keep)
        ranges = compute_ranges(collect_stats(fp32, plan.calibrated_tensors, m["calib"]), "max")
        paths[variant] = work / f"{name}.{len(paths)}.onnx"
        paths[variant].write_bytes(insert_qdq(fp32, plan, ranges).SerializeToString(deterministic=True))
    paths["quantize_static"] = work / f"{name}.qs.onnx"
    quantize_static_model(paths["fp32"], m["calib"], paths["quantize_static"])
    x = np.ascontiguousarray(np.concatenate([m["x_eval"][:1]] * batch))
    out: dict[str, Any] = {
        "model": name,
        "input_shape": list(m["shape"]),
        "batch": batch,
        "runs": runs,
        "first_conv": first_conv,
        "convs": [node_name(n) for n in fp32.graph.node if n.op_type == "Conv"],
        "conv_names": conv_names(fp32),
        "variants": {},
    }
    out["kernels_vs_quantize_static"] = compare_kernels(
        optimized(paths["onnxruntime"], work / f"{name}.a.opt.onnx"), optimized(paths["quantize_static"], work / f"{name}.b.opt.onnx")
    )
    out["variants"] = profile({v: paths[v] for v in VARIANTS}, x, runs, work)
    for variant, p in out["variants"].items():
        print(f"   {variant:30s} wall p50 {p['wall_p50_ms']:9.2f} ms, kernels {p['kernel_sum_ms']:9.2f} ms", flush=True)
    return out


def _conv_rows(v: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in v["nodes"] if n["op"] in ("Conv", "QLinearConv")]


def conv_names(model: onnx.ModelProto) -> dict[str, str]:
    """Profiler node name -> the model's Conv node name.

    INT8 kernels keep the node name plus ``_token_<n>``; ONNX Runtime names a fused FP32 NCHWc Conv
    after the output tensor of what it absorbed (``<tensor>_nchwc``): the Conv's own output, or
    that of the Add and/or Relu that follow it.
    """
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for t in n.input:
            consumers[t].append(n)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        name, t = node_name(n), n.output[0]
        out[name] = name
        for _ in range(3):
            out[t] = name
            nxt = consumers.get(t, [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Add", "Relu"):
                break
            t = nxt[0].output[0]
    return out


def align(v: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    """Kernel ms per model Conv node name."""
    out = {}
    for n in _conv_rows(v):
        key = re.sub(r"_token_\d+$", "", n["node"])
        key = key[: -len("_nchwc")] if key.endswith("_nchwc") else key
        if key in names:
            out[names[key]] = n["ms"]
    return out


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# ONNX Runtime kernel profile",
        "",
        f"`{doc['command']}`, {doc['date']}; ONNX Runtime {doc['onnxruntime']}, "
        "CPU provider, 2 threads, graph optimization ALL. Times are the median over the profiled runs of "
        "ONNX Runtime's own per-kernel timing (the profiler adds a little per-kernel overhead; compare "
        "variants with each other, and see benchmarks/topology.md for latency). The variants take turns in 4 "
        "rounds (forward, then reverse order) so load changes hit all alike.",
        "",
    ]
    for r in doc["models"]:
        v = r["variants"]
        lines += [
            f"## {r['model']} ({'x'.join(map(str, r['input_shape']))}), batch {r['batch']}",
            "",
            "| variant | wall p50 (ms) | sum of kernels (ms) | top kernels (ms) |",
            "|---|---:|---:|---|",
        ]
        for name in VARIANTS:
            p = v[name]
            top = ", ".join(f"{op} {ms:.2f}" for op, ms in list(p["by_op"].items())[:5])
            lines.append(f"| {name} | {p['wall_p50_ms']:.2f} | {p['kernel_sum_ms']:.2f} | {top} |")
        ours, theirs, fp = (align(v[k], r["conv_names"]) for k in ("onnxruntime", "quantize_static", "fp32"))
        lines += [
            "",
            "Conv kernels layer by layer, matched by node name (an FP32 Conv kernel includes the Add/ReLU "
            "ONNX Runtime fused into it; a QLinearConv includes the ReLU folded into its output range):",
            "",
            "| Conv | onnxruntime policy (ms) | quantize_static (ms) | FP32 (ms) | FP32 / policy |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in r["convs"]:
            a, b, f = ours.get(c), theirs.get(c), fp.get(c)
            cell = [f"{x:.3f}" if x is not None else "?" for x in (a, b, f)]
            ratio = f"{f / a:.2f}x" if a and f else ""
            lines.append(f"| `{c}` | {cell[0]} | {cell[1]} | {cell[2]} | {ratio} |")
        lines.append("")
    lines += ["## Findings", ""] + [f"- {f}" for f in doc["findings"]] + [""]
    return "\n".join(lines)


def findings(models: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in models:
        v = r["variants"]
        a, b = v["onnxruntime"]["by_op"], v["quantize_static"]["by_op"]
        c = r["kernels_vs_quantize_static"]
        diff = "; ".join([*(f"only ours: {x}" for x in c["only_ours"]), *(f"only theirs: {x}" for x in c["only_theirs"])])
        out.append(
            f"{r['model']}: in the graphs ONNX Runtime runs (optimization ALL), the onnxruntime policy has "
            f"{c['nodes'][0]} nodes and quantize_static {c['nodes'][1]}; {c['identical']} are the same kernel "
            f"(op, domain, attributes, constant dtypes and shapes){': ' + diff if diff else ''}. "
            f"QLinearConv time {a.get('QLinearConv', 0):.2f} vs {b.get('QLinearConv', 0):.2f} ms, wall p50 "
            f"{v['onnxruntime']['wall_p50_ms']:.2f} vs {v['quantize_static']['wall_p50_ms']:.2f} ms"
        )
        k = v["onnxruntime, first conv FP32"]["by_op"]
        first_int8 = align(v["onnxruntime"], r["conv_names"]).get(r["first_conv"], float("nan"))
        first_fp = align(v["onnxruntime, first conv FP32"], r["conv_names"]).get(r["first_conv"], float("nan"))
        out.append(
            f"{r['model']}: first conv as INT8 {first_int8:.3f} ms vs FP32 {first_fp:.3f} ms; with it in FP32 "
            f"the graph runs Transpose {k.get('Transpose', 0):.2f} ms (policy: {a.get('Transpose', 0):.2f} ms) "
            f"and ReorderOutput {k.get('ReorderOutput', 0):.2f} ms; wall p50 "
            f"{v['onnxruntime, first conv FP32']['wall_p50_ms']:.2f} vs {v['onnxruntime']['wall_p50_ms']:.2f} ms"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,demo")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import onnxruntime

    doc: dict[str, Any] = {
        "schema": "rescompile.bench.ort_kernels/1",
        "command": f"python benchmarks/ort_kernels.py --models {args.models} --batch {args.batch} --runs {args.runs}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "onnxruntime": onnxruntime.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="rescompile-kernels-") as tmp:
        for name in args.models.split(","):
            doc["models"].append(bench(name, args.batch, args.runs, Path(tmp)))
    doc["findings"] = findings(doc["models"])
    write_results(args.out, "ort_kernels", doc, render)


if __name__ == "__main__":
    main()
