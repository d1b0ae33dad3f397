"""Q/DQ ONNX -> plain ONNX + per-tensor ranges, for DLA on TensorRT 10.x (implicit INT8 only).

DLA on TensorRT 10.x does not take explicit Q/DQ graphs; NVIDIA's qdq-translator turns a
Q/DQ ONNX into a plain ONNX plus per-tensor ranges. This is the same idea as a pure function:
weights are dequantized back to float (TensorRT requantizes them per channel), each activation
Q/DQ pair is removed and its scale becomes the tensor's range (amax = scale * 127). Ranges are
carried forward through ops that cannot widen them (ReLU, pooling, reshapes).

Residual Adds: DLA's INT8 elementwise SUM needs equal dynamic ranges on both inputs (TensorRT
10.3 headers, DLA restrictions; docs/tensorrt.md "DLA"), or the Add runs FP16 / on the GPU. The
main-branch Conv output has no Q/DQ of its own (the TensorRT placement keeps it fused), so both
Add inputs get the larger of the known ranges, and the Add's output gets its ReLU follower's
range (values the ReLU clips away need no range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from rescompile.errors import UsageError

# Ops whose output range is within their input's: an input range is an upper bound for the output.
_RANGE_PRESERVING = frozenset(
    {
        "Relu",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Flatten",
        "Reshape",
        "Identity",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
    }
)


@dataclass(frozen=True)
class ImplicitModel:
    """A plain float ONNX model and the symmetric range (amax) of each tensor that had a Q/DQ."""

    model: onnx.ModelProto
    ranges: dict[str, float]
    equalized_adds: tuple[str, ...] = ()  # Adds whose two inputs got one range


def _const(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    if name not in inits:
        raise UsageError(f"Q/DQ parameter {name!r} is not a constant initializer")
    return numpy_helper.to_array(inits[name])


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    if scale.ndim == 0 or scale.size == 1:
        shape: list[int] = []
    else:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
    zero = 0 if zp is None else zp.astype(np.float32).reshape(shape) if shape else zp.astype(np.float32)
    s = scale.astype(np.float32).reshape(shape) if shape else scale.astype(np.float32)
    return ((q.astype(np.float32) - zero) * s).astype(np.float32)


def strip_qdq(model: onnx.ModelProto) -> ImplicitModel:
    """Remove every Q/DQ of a symmetric INT8 Q/DQ model, returning the float model and its ranges.

    Raises:
        UsageError: a non-zero zero point (asymmetric/UINT8, e.g. the onnxruntime policy), a Q
            without its DQ, or Q/DQ parameters that are not constants.
    """
    src = onnx.ModelProto.FromString(model.SerializeToString())
    g = src.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    rename: dict[str, str] = {}  # DQ output -> tensor to use instead
    ranges: dict[str, float] = {}
    new_inits: list[onnx.TensorProto] = []
    drop: set[int] = set()

    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        scale = _const(inits, n.input[1])
        zp = _const(inits, n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and np.any(zp != 0):
            raise UsageError(
                f"{n.name or n.output[0]} has a non-zero zero point: DLA needs symmetric INT8 (build the Q/DQ model with --policy tensorrt)"
            )
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if n.input[0] in inits:  # a weight: fold back to float
            w = _dequantize(numpy_helper.to_array(inits[n.input[0]]), scale, zp, axis)
            new_inits.append(numpy_helper.from_array(w, n.output[0]))
            drop.add(id(n))
            continue
        q = producer.get(n.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            raise UsageError(f"DequantizeLinear {n.name!r} does not follow a QuantizeLinear or a constant")
        if scale.size != 1:
            raise UsageError(f"activation Q/DQ on {q.input[0]!r} is per-channel; DLA ranges are per tensor")
        tensor = q.input[0]
        ranges[tensor] = float(scale.reshape(-1)[0]) * 127.0
        rename[n.output[0]] = tensor
        drop.update({id(n), id(q)})

    kept = [n for n in g.node if id(n) not in drop]
    for n in kept:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for o in g.output:
        if o.name in rename:
            raise UsageError(f"graph output {o.name!r} is a DequantizeLinear output; cannot strip it")
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    del g.value_info[:]
    # Carry ranges forward through ops that cannot widen them (graph order is topological).
    for n in g.node:
        if n.op_type in _RANGE_PRESERVING and n.input and n.input[0] in ranges and n.output[0] not in ranges:
            ranges[n.output[0]] = ranges[n.input[0]]
    equalized = equalize_add_ranges(g, ranges)
    onnx.checker.check_model(src)
    return ImplicitModel(src, dict(sorted(ranges.items())), equalized)


def equalize_add_ranges(g: onnx.GraphProto, ranges: dict[str, float]) -> tuple[str, ...]:
    """Give both inputs of every two-input Add the same range (the larger known one), in place; the Adds changed.

    An Add whose only consumer is a ReLU with a range also gets that range on its output.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    constants = {t.name for t in g.initializer}
    done = []
    for i, n in enumerate(g.node):
        if n.op_type != "Add" or len(n.input) != 2 or any(t in constants for t in n.input):
            continue
        known = [ranges[t] for t in n.input if t in ranges]
        if not known:
            continue
        amax = max(known)
        for t in n.input:
            ranges[t] = amax
        follow = consumers.get(n.output[0], [])
        if len(follow) == 1 and follow[0].op_type == "Relu" and follow[0].output[0] in ranges and n.output[0] not in ranges:
            ranges[n.output[0]] = ranges[follow[0].output[0]]
        done.append(n.name or f"Add_{i}")
    return tuple(done)
