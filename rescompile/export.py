"""PyTorch -> ONNX: opset >= 17, dynamic batch axis, named input/output, parity-checked."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from rescompile.config import ExportConfig as ExportConfig  # the settings live with every user choice
from rescompile.errors import ParityError, UsageError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ParityResult:
    max_abs_error: float
    atol: float
    passed: bool
    probe: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (inputs, the checked model's outputs)


def parity_inputs(shape: tuple[int, int, int], batch: int, seed: int = 0) -> np.ndarray:
    """Fixed pseudo-random inputs for parity checks."""
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def run_onnx(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    """Run a model (or its serialized bytes) once on ONNX Runtime's CPU provider with graph optimizations off."""
    from rescompile.runtime.sessions import ort_session

    sess = ort_session(model, optimize=False)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def run_torch(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(torch.from_numpy(x)).float().numpy()


def check_parity(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float, stage: str) -> ParityResult:
    """Compare outputs; raise ParityError naming the stage when they drift."""
    err = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    tol = atol + rtol * float(np.max(np.abs(reference))) if reference.size else atol
    if reference.shape != candidate.shape or not np.isfinite(err) or err > tol:
        raise ParityError(
            f"{stage}: output differs from PyTorch by {err:.3g} (tolerance {tol:.3g}, shapes {reference.shape} vs {candidate.shape})"
        )
    return ParityResult(err, tol, True)


def export_onnx(module: Any, input_shape: tuple[int, int, int], cfg: ExportConfig | None = None) -> tuple[onnx.ModelProto, ParityResult]:
    """Export ``module`` to ONNX and check the outputs against PyTorch.

    Returns:
        The ONNX model (input ``input``, output ``logits``, dynamic batch) and the parity result, whose
        ``probe`` (inputs and ONNX Runtime's outputs) spares :func:`rescompile.simplify.simplify` running it again.

    Raises:
        UsageError: the module cannot be exported; ParityError: outputs drift beyond tolerance.
    """
    import torch

    cfg = cfg or ExportConfig()
    if cfg.opset < 17:
        raise UsageError(f"opset {cfg.opset} is too old: rescompile needs opset >= 17")
    module = module.eval()
    x = torch.from_numpy(parity_inputs(input_shape, 2, cfg.seed))
    exported: bytes | None = None  # the TorchScript exporter's bytes: ONNX Runtime reads them without serializing the model again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if cfg.exporter == "dynamo":
                prog = torch.onnx.export(
                    module,
                    (x,),
                    None,
                    dynamo=True,
                    opset_version=max(cfg.opset, 18),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    verbose=False,
                )
                if prog is None:
                    raise UsageError("torch.onnx.export (dynamo) returned no program")
                model = prog.model_proto
            elif cfg.exporter == "torchscript":
                buf = io.BytesIO()
                # The TorchScript exporter accepts a file object (the stubs say path only).
                torch.onnx.export(
                    module,
                    (x,),
                    buf,  # type: ignore[arg-type]
                    dynamo=False,
                    opset_version=cfg.opset,
                    do_constant_folding=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
                exported = buf.getvalue()
                model = onnx.load_from_string(exported)
            else:
                raise UsageError(f"unknown exporter {cfg.exporter!r}: use torchscript or dynamo")
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    model.producer_name, model.producer_version = "rescompile", ""
    probe = parity_inputs(input_shape, cfg.parity_batch, cfg.seed)
    outputs = run_onnx(model if exported is None else exported, probe)  # the same graph (the producer fields aside)
    parity = check_parity(run_torch(module, probe), outputs, cfg.atol, cfg.rtol, "export")
    parity.probe = (probe, outputs)
    return model, parity
