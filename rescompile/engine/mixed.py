"""Type the non-quantized part of a Q/DQ ONNX FP16 for a strongly typed TensorRT build (``--rest-precision fp16``).

Under strong typing the ONNX tensor types are the precision: every layer without Q/DQ (kept-FP
layers, auto-fallback's choices, the head) runs FP32 unless its tensors say FP16 (TensorRT
"Strongly Typed Networks"; for DLA on 11.4.1: "converting the model is what enables FP16 compute
on DLA"). This pass is the rule ModelOpt applies with ``high_precision_dtype="fp16"`` / AutoCast
``keep_io_types``, written down so a reader can predict each node:

1. Quantized region stays as it is (FP32 typed, TensorRT fuses it into INT8 kernels):
   Q/DQ nodes, every node reading a DQ output (weighted ops, the residual Add's shortcut), and
   the epilogue ops (``EPILOGUE``) fed by those. Q inputs stay FP32 (opset < 19 takes FP32 only).
2. Numerically sensitive ops stay FP32 (``KEEP_FP32``): softmax, normalizations, reductions,
   exponentials/logarithms/powers (overflow or cancellation in FP16), and ops that set their
   output type by attribute. A node reading a float constant beyond the FP16 range (65504)
   stays FP32 too (AutoCast's ``init_max``).
3. Every other node with float tensors is FP16: its float initializers are converted, and a
   ``Cast`` is inserted on each tensor crossing between FP32 and FP16 nodes. The graph's
   inputs and outputs keep their FP32 type (``keep_io_types``), so runners and references do not change.

The portable ``model.int8.onnx`` is never rewritten: the engine stage builds from this typed copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescompile.errors import UsageError

FP16_MAX = 65504.0
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
EPILOGUE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Identity", "Add"})
KEEP_FP32 = {
    **dict.fromkeys(("Softmax", "LogSoftmax"), "softmax: exponentials and a sum over the axis"),
    **dict.fromkeys(
        ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization", "MeanVarianceNormalization"),
        "normalization: variance of many elements",
    ),
    **dict.fromkeys(
        ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd"),
        "reduction: a sum over many elements",
    ),
    **dict.fromkeys(("Exp", "Log", "Pow", "Sqrt", "Reciprocal"), "exp/log/pow: overflow or cancellation in FP16"),
    **dict.fromkeys(
        ("Cast", "CastLike", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"),
        "sets its output type by attribute",
    ),
}
UNTYPED = frozenset({"Shape", "Size"})  # read any type, write int64: left alone
FLOAT32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}  # roi/scales are tensor(float) by the ONNX spec


@dataclass(frozen=True)
class RestTyping:
    """The typed model and, per node, the precision it got (and why FP32 where it stays so)."""

    model: onnx.ModelProto
    fp16: tuple[str, ...]
    fp32: dict[str, str] = field(default_factory=dict)  # node -> reason
    casts: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"fp16_nodes": len(self.fp16), "fp32_nodes": dict(sorted(self.fp32.items())), "casts_inserted": self.casts}


def _name(n: onnx.NodeProto, i: int) -> str:
    return n.name or f"{n.op_type}_{i}"


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            out.add(vi.name)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    out.update(n.output)
    return out


def classify(model: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str]]:
    """(node -> "fp16" | "fp32" | "quantized" | "untouched", node -> reason for FP32) by the rules above (pure)."""
    g = model.graph
    floats = _float_tensors(model)
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    kind: dict[str, str] = {}
    why: dict[str, str] = {}
    quantized: set[str] = set()
    for i, n in enumerate(g.node):
        name = _name(n, i)
        touches_float = any(t in floats for t in (*n.input, *n.output) if t)
        from_q = [producer[t] for t in n.input if t in producer]
        if n.op_type in QDQ or any(p.op_type == "DequantizeLinear" for p in from_q):
            kind[name] = "quantized"
        elif n.op_type in EPILOGUE and any(o in quantized for p in from_q for o in p.output):
            kind[name] = "quantized"
        elif not touches_float or n.op_type in UNTYPED:
            kind[name] = "untouched"
        elif n.op_type in KEEP_FP32:
            kind[name], why[name] = "fp32", KEEP_FP32[n.op_type]
        elif any(t in inits and t in floats and _too_big(inits[t]) for t in n.input):
            kind[name], why[name] = "fp32", f"a constant beyond the FP16 range ({FP16_MAX:g})"
        else:
            kind[name] = "fp16"
        if kind[name] == "quantized":
            quantized.update(n.output)
            why[name] = "quantized (Q/DQ region: TensorRT runs it INT8)"
    return kind, why


def _too_big(t: onnx.TensorProto) -> bool:
    a = numpy_helper.to_array(t)
    return bool(a.size) and bool(np.nanmax(np.abs(a)) > FP16_MAX)


def _to_fp16(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), name)


def type_rest_fp16(model: onnx.ModelProto) -> RestTyping:
    """A copy of ``model`` whose non-quantized part is typed FP16 (module docstring: the rule).

    Raises:
        UsageError: the typed model fails ONNX type checking (a case the rule does not cover).
    """
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    kind, why = classify(m)
    floats = _float_tensors(m)
    names = [_name(n, i) for i, n in enumerate(g.node)]
    is16 = {names[i] for i in range(len(names)) if kind[names[i]] == "fp16"}
    producer16 = {o for i, n in enumerate(g.node) if names[i] in is16 for o in n.output}

    # Graph outputs written by an FP16 node: the node writes <name>__fp16, a Cast gives back the FP32 output.
    outputs = {o.name for o in g.output}
    renamed = {o: f"{o}__fp16" for o in outputs & producer16}
    for n in g.node:
        n.output[:] = [renamed.get(o, o) for o in n.output]
        n.input[:] = [renamed.get(t, t) for t in n.input]
    producer16 = {renamed.get(o, o) for o in producer16}
    floats |= set(renamed.values())

    consumers: dict[str, list[str]] = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            consumers.setdefault(t, []).append(names[i])
    inits = {t.name: t for t in g.initializer}
    casts: dict[str, onnx.NodeProto] = {}
    new_inits: dict[str, onnx.TensorProto] = {}
    converted: set[str] = set()

    def cast(tensor: str, to: int) -> str:
        suffix = "__to_fp16" if to == TensorProto.FLOAT16 else "__to_fp32"
        out = tensor + suffix
        if out not in casts:
            casts[out] = helper.make_node("Cast", [tensor], [out], name=out, to=to)
        return out

    for i, n in enumerate(g.node):
        name = names[i]
        keep32 = FLOAT32_ONLY_INPUTS.get(n.op_type, set())
        if name in is16:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                        a.t.CopyFrom(_to_fp16(a.t, a.t.name))
            for j, t in enumerate(n.input):
                if not t or t not in floats or j in keep32 or t in producer16:
                    continue
                if t in inits:
                    if all(c in is16 for c in consumers[t]):
                        if t not in converted:
                            new_inits[t] = _to_fp16(inits[t], t)
                            converted.add(t)
                    else:
                        new_inits.setdefault(t + "__fp16", _to_fp16(inits[t], t + "__fp16"))
                        n.input[j] = t + "__fp16"
                else:
                    n.input[j] = cast(t, TensorProto.FLOAT16)
        elif kind[name] != "untouched":
            for j, t in enumerate(n.input):
                if t in producer16:
                    n.input[j] = cast(t, TensorProto.FLOAT)
    kept = [t for t in g.initializer if t.name not in new_inits]
    del g.initializer[:]
    g.initializer.extend([*kept, *new_inits.values()])
    for orig, typed in renamed.items():
        casts[orig] = helper.make_node("Cast", [typed], [orig], name=f"{orig}__output_fp32", to=TensorProto.FLOAT)
    _insert_casts(g, casts.values())
    del g.value_info[:]
    try:
        onnx.checker.check_model(m)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several types; any of them means the rule produced a bad model
        raise UsageError(
            f"typing the non-quantized layers FP16 gave an invalid model: {exc}", hint="build with --rest-precision fp32"
        ) from None
    fp32 = {k: v for k, v in why.items() if kind[k] == "fp32"}
    return RestTyping(m, tuple(sorted(is16)), fp32, len(casts))


def _insert_casts(g: onnx.GraphProto, casts: Iterable[onnx.NodeProto]) -> None:
    """Put each Cast right after its input's producer (graph order stays topological)."""
    after: dict[str, list[onnx.NodeProto]] = {}
    for c in casts:
        after.setdefault(c.input[0], []).append(c)
    nodes: list[onnx.NodeProto] = []
    for c in after.pop("", []):
        nodes.append(c)
    graph_level = {i.name for i in g.input} | {t.name for t in g.initializer}
    for t in list(after):
        if t in graph_level:
            nodes.extend(after.pop(t))
    for n in g.node:
        nodes.append(n)
        for o in n.output:
            nodes.extend(after.pop(o, []))
    copied = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del g.node[:]
    g.node.extend(copied)
