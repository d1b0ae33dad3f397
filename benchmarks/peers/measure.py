"""One way to measure every INT8 ONNX model of ``benchmarks/accuracy_hard.py``, whichever tool made it.

Needs only numpy, onnx and onnxruntime, so the peers' own environments (``/work/venv-nncf``,
``/work/venv-modelopt``) import it too.

* ``top1``: ONNX Runtime CPU (all graph optimizations, as a user runs it), batches of 500.
* ``fp_macs_share``: a Conv/Gemm/MatMul counts as quantized when both its data input and its weight
  come out of a DequantizeLinear; the MACs of every other one are "left in FP". MACs from the
  output shapes of one ONNX Runtime run at batch 1.
* ``latency``: batch 1, one intra-op thread, median (and p90) of ``runs`` timed runs after warm-up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

MEAN, STD = 0.2860, 0.3530  # rescompile's fashion-mnist preset (pixel / 255)
WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 N,28,28 -> float32 N,1,28,28 model inputs."""
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def session(model: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def logits(sess: ort.InferenceSession, x: np.ndarray, batch: int = 500) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _output_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes of ``names`` at batch 1, from one ONNX Runtime run on zeros (static shape inference does not see
    through every graph: the GroupNorm export's Reshape(Shape(x)) leaves it with unknown dimensions)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = session(m.SerializeToString())
    inp = sess.get_inputs()[0]
    x = np.zeros([1 if not isinstance(d, int) else d for d in inp.shape], np.float32)
    outs = sess.run(names, {inp.name: x})
    return {n: list(o.shape) for n, o in zip(names, outs, strict=True)}


def macs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Every weighted node: name, op, MACs at batch 1, and whether data and weight inputs are quantized."""
    m = model
    shapes = _output_shapes(m, [n.output[0] for n in m.graph.node if n.op_type in WEIGHTED])
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:  # Constant nodes (ModelOpt/NNCF may store weights there)
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = list(numpy_helper.to_array(a.t).shape)

    def shape(name: str) -> list[int]:
        return inits.get(name) or shapes.get(name) or []

    def from_dq(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    def weight_shape(name: str) -> list[int]:
        p = producer.get(name)
        while p is not None and p.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast", "Identity"):
            name = p.input[0]
            p = producer.get(name)
        return shape(name)

    rows = []
    for n in m.graph.node:
        if n.op_type not in WEIGHTED:
            continue
        out = shape(n.output[0])
        w = weight_shape(n.input[1])
        if not out or not w:
            raise ValueError(f"no shape for {n.name or n.output[0]} ({n.op_type}) of the model")
        if n.op_type in ("Conv", "ConvTranspose"):
            count = int(np.prod(out)) * int(np.prod(w[1:]))  # out elems x (Cin/groups * kh * kw)
        elif n.op_type == "Gemm":
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            k = w[1] if trans_b else w[0]
            count = int(np.prod(out)) * int(k)
        else:
            count = int(np.prod(out)) * int(w[-2])
        rows.append(
            {"node": n.name or n.output[0], "op": n.op_type, "macs": count, "quantized": from_dq(n.input[0]) and from_dq(n.input[1])}
        )
    return rows


def fp_macs_share(model: onnx.ModelProto) -> float:
    rows = macs(model)
    total = sum(r["macs"] for r in rows)
    return sum(r["macs"] for r in rows if not r["quantized"]) / total if total else 0.0


def latency_ms(sess: ort.InferenceSession, x1: np.ndarray, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x1})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x1})
        t.append((time.perf_counter() - t0) * 1000.0)
    return {"p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "runs": runs}


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """What kind of quantization the graph holds: counts of Q/DQ nodes, and QuantizeLinear nodes by zero-point dtype."""
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    dtypes: dict[str, int] = {}
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            key = f"{zp.dtype}{'' if not zp.any() else ' zp!=0'}"
            dtypes[key] = dtypes.get(key, 0) + 1
    return {"quantize_linear": ops.get("QuantizeLinear", 0), "dequantize_linear": ops.get("DequantizeLinear", 0), "q_dtypes": dtypes}


def evaluate_model(path: Path, x_test: np.ndarray, y_test: np.ndarray, *, runs: int = 200) -> dict[str, Any]:
    """top-1 on the test set, FP MAC share, batch-1 latency, Q/DQ summary of one ONNX model."""
    model = onnx.load(str(path))
    sess = session(path, threads=1)
    out = logits(sess, x_test)
    return {
        "top1": float(np.mean(out.argmax(1) == y_test) * 100.0),
        "predictions": out.argmax(1).astype(np.int8),
        "fp_macs_share": fp_macs_share(model),
        **latency_ms(sess, x_test[:1], runs=runs),
        "qdq": qdq_summary(model),
    }
