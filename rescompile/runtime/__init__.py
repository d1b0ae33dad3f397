"""Runners with one protocol: ``infer(x) -> logits`` on a batch, plus a name."""

from rescompile.runtime.runners import OnnxRuntimeRunner, Runner, TorchRunner, onnx_precision, open_runner

__all__ = ["OnnxRuntimeRunner", "Runner", "TorchRunner", "onnx_precision", "open_runner"]
