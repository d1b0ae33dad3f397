"""ONNX files as a model source: read the input shape and class count, check it is a ResNet.

``build`` takes FP32 graphs only: a graph that already holds Q/DQ (or QLinear*/ConvInteger
ops) is refused, and a graph below opset 13 (per-axis DequantizeLinear needs 13) is converted
with onnx's version converter and parity-checked on ONNX Runtime, or refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rescompile.errors import UsageError

log = logging.getLogger(__name__)

MIN_OPSET = 13  # per-axis (per-channel) DequantizeLinear, the weights' Q/DQ, exists from opset 13
# Ops that mean the graph is already quantized (explicit Q/DQ, or ONNX Runtime's operator-oriented format).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
    }
)
CONVERTED_ATOL = 1e-4  # the converted graph must reproduce the original's outputs this closely (plus rtol)
CONVERTED_RTOL = 1e-3


@dataclass(frozen=True)
class OpsetConversion:
    """An ONNX graph below ``MIN_OPSET`` converted by onnx.version_converter, with its parity on ONNX Runtime."""

    from_opset: int
    to_opset: int
    max_abs_error: float

    def to_dict(self) -> dict[str, float | int]:
        return {"from": self.from_opset, "to": self.to_opset, "max_abs_error": self.max_abs_error}


def default_opset(model) -> int:  # type: ignore[no-untyped-def]
    """The graph's ``ai.onnx`` opset version (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def refuse_quantized(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Raise UsageError when ``model`` already holds Q/DQ or quantized ops: ``build`` starts from FP32."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise UsageError(
            f"{path} is already quantized (it holds {', '.join(found)}); build takes an FP32 model",
            hint=f"to check it against its FP32 model: 'rescompile validate {path} --reference FP32.onnx' (accuracy) and "
            f"'rescompile inspect FP32.onnx --int8 {path}' (topology proof); 'rescompile engine {path}' builds a "
            "TensorRT engine from it; to build again, start from the FP32 model",
        )


def upgrade_opset(model, path: Path, input_shape: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    """Convert a graph below opset 13 with onnx's version converter and check it against the original.

    Returns:
        ``(model, None)`` when the opset is already 13 or above, else ``(converted, OpsetConversion)``.

    Raises:
        UsageError: the converter fails, or the converted graph's outputs on ONNX Runtime differ from
            the original's beyond CONVERTED_ATOL + CONVERTED_RTOL * max|output|.
    """
    import numpy as np
    import onnx
    from onnx import version_converter

    from rescompile.export import parity_inputs, run_onnx

    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model, None
    hint = "export it again with opset 13 or newer (torch.onnx.export(..., opset_version=17))"
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises several types (RuntimeError, ValidationError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{path} uses opset {opset}; rescompile needs {MIN_OPSET} (per-axis DequantizeLinear) "
            f"and onnx's version converter cannot convert it: {first}",
            hint=hint,
        ) from None
    dims = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}][0]
    batch_dim = dims.type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_value if batch_dim.HasField("dim_value") and batch_dim.dim_value > 0 else 2
    x = parity_inputs(input_shape, batch)
    try:
        ref, got = run_onnx(model, x), run_onnx(converted, x)
    except Exception as exc:  # ONNX Runtime rejects one of the graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{path} (opset {opset}) converted to opset {MIN_OPSET} does not run on ONNX Runtime: {first}", hint=hint
        ) from None
    err = float(np.max(np.abs(ref - got))) if ref.shape == got.shape and ref.size else float("inf")
    tol = CONVERTED_ATOL + CONVERTED_RTOL * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    if not np.isfinite(err) or err > tol:
        raise UsageError(
            f"{path} (opset {opset}) converted to opset {MIN_OPSET} changes the outputs by {err:.3g} (tolerance {tol:.3g})", hint=hint
        )
    conversion = OpsetConversion(opset, MIN_OPSET, err)
    log.info("%s: opset %d converted to %d by onnx's version converter (outputs match, max abs error %.3g)", path, opset, MIN_OPSET, err)
    return converted, conversion


@dataclass(frozen=True)
class BatchFreed:
    """A graph exported with a fixed batch size whose batch dimension was made dynamic, with its parity."""

    fixed: int
    max_abs_error: float

    def to_dict(self) -> dict[str, float | int]:
        return {"fixed": self.fixed, "max_abs_error": self.max_abs_error}


def free_batch(model, path: Path, input_shape: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    """Make a fixed batch dimension (``torch.onnx.export`` without ``dynamic_axes``) dynamic, and check it.

    Calibration and validation run batches of many samples; a graph whose input says "batch 1"
    is rewritten to a symbolic batch (intermediate shapes are dropped and re-inferred later), then
    run on ONNX Runtime on two batches' worth of inputs at once and compared with the original run
    batch by batch.

    Returns:
        ``(model, None)`` when the batch is already dynamic, else ``(rewritten, BatchFreed)``.

    Raises:
        UsageError: the graph depends on its fixed batch size (e.g. a Reshape to 1 x N).
    """
    import numpy as np
    import onnx

    from rescompile.export import parity_inputs, run_onnx

    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dim0 = inp.type.tensor_type.shape.dim[0]
    if not dim0.HasField("dim_value") or dim0.dim_value <= 0:
        return model, None
    fixed = int(dim0.dim_value)
    freed = onnx.ModelProto.FromString(model.SerializeToString())
    targets = [i for i in freed.graph.input if i.name == inp.name] + list(freed.graph.output)
    for vi in targets:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "batch"  # clears dim_value (a oneof)
    del freed.graph.value_info[:]
    hint = "export with a dynamic batch: torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}})"
    x = parity_inputs(input_shape, 2 * fixed, seed=1)
    try:
        ref = np.concatenate([run_onnx(model, x[i : i + fixed]) for i in (0, fixed)])
        got = run_onnx(freed, x)
    except Exception as exc:  # ONNX Runtime rejects the rewritten graph: a shape in it depends on the batch
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} has a fixed batch size of {fixed} that its graph depends on: {first[:200]}", hint=hint) from None
    err = float(np.max(np.abs(ref - got))) if ref.shape == got.shape and ref.size else float("inf")
    tol = CONVERTED_ATOL + CONVERTED_RTOL * (float(np.max(np.abs(ref))) if ref.size else 0.0)
    if not np.isfinite(err) or err > tol:
        raise UsageError(f"{path} has a fixed batch size of {fixed}; with a dynamic batch its outputs change by {err:.3g}", hint=hint)
    log.info("%s: fixed batch size %d made dynamic (outputs match, max abs error %.3g)", path, fixed, err)
    return freed, BatchFreed(fixed, err)


def _has_weighted_op(model) -> bool:  # type: ignore[no-untyped-def]
    """Networks without a residual Add (DenseNet, ShuffleNet) build too; one weighted op is the minimum."""
    from rescompile.graph.ops import WEIGHTED_OPS

    inits = {t.name for t in model.graph.initializer}
    return any(n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits for n in model.graph.node)


def describe_onnx(path: Path, *, require_residual: bool = True):  # type: ignore[no-untyped-def]
    """The input shape, classes and preset of an ONNX model file.

    With ``require_residual`` (the ``build`` path) a graph that is already quantized, holds a node
    placement cannot handle (rule G1: control flow, non-standard ops), or has no weighted op to
    quantize is refused (UsageError). A graph without residual Adds (DenseNet, ShuffleNet) builds.
    """
    from rescompile.data.preprocess import default_preset
    from rescompile.models.loaded import LoadedModel
    from rescompile.quantize.policy import check_supported
    from rescompile.readers import read_onnx

    model = read_onnx(path)
    if require_residual:
        refuse_quantized(model, path)
        check_supported(model)  # control flow or non-standard ops: exit 2 naming the node, before any work
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"{path} has {len(inputs)} inputs; rescompile takes image classifiers with one input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]):
        raise UsageError(f"{path}: input {inputs[0].name!r} must be N x C x H x W with fixed C, H, W")
    c, h, w = (d.dim_value for d in dims[1:])
    if not model.graph.output:
        raise UsageError(f"{path} has no graph output; rescompile takes image classifiers with one output (the logits)")
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    num_classes = out_dims[-1].dim_value if out_dims and out_dims[-1].HasField("dim_value") else 0
    if require_residual and not _has_weighted_op(model):
        raise UsageError(
            f"{path} has no Conv, Gemm or MatMul with a weight initializer: nothing for rescompile to quantize",
            hint="export the model with its weights as initializers (torch.onnx.export does by default)",
        )
    return LoadedModel(path.stem, None, path, (c, h, w), num_classes, default_preset(c, h), {"spec": str(path)}, model)
