"""ONNX files as a model source: read the input shape and class count, check it is a ResNet."""

from __future__ import annotations

from pathlib import Path

from rescompile.errors import UsageError


def read_onnx(path: Path):  # type: ignore[no-untyped-def]
    """Load an ONNX file or raise UsageError naming the problem."""
    import onnx

    if not path.is_file():
        raise UsageError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for a corrupt file
        raise UsageError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise UsageError(f"{path} holds an empty ONNX graph")
    return model


def describe_onnx(path: Path, *, require_residual: bool = True):  # type: ignore[no-untyped-def]
    from rescompile.graph.topology import find_residual_blocks
    from rescompile.models.loader import LoadedModel

    model = read_onnx(path)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"{path} has {len(inputs)} inputs; rescompile takes image classifiers with one input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]):
        raise UsageError(f"{path}: input {inputs[0].name!r} must be N x C x H x W with fixed C, H, W")
    c, h, w = (d.dim_value for d in dims[1:])
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    num_classes = out_dims[-1].dim_value if out_dims and out_dims[-1].HasField("dim_value") else 0
    if require_residual and not find_residual_blocks(model):
        raise UsageError(
            f"{path} has no residual Add: rescompile quantizes residual networks (ResNet family)",
            hint="export a ResNet, or check that this is the model you meant",
        )
    preset = "imagenet" if (c, h) == (3, 224) else ("cifar" if c == 3 else "grayscale")
    return LoadedModel(path.stem, None, path, (c, h, w), num_classes, preset, {"spec": str(path)})
