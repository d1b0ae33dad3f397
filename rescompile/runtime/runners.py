"""Runners for the FP32 reference and the candidates: PyTorch and ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import onnx


class Runner(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """A PyTorch module in eval mode, inference only."""

    def __init__(self, module: Any, name: str = "pytorch-fp32", threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.module = module.eval()
        self.name = name

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


class OnnxRuntimeRunner:
    """An ONNX model on ONNX Runtime's CPU provider with full graph optimization."""

    def __init__(self, model: onnx.ModelProto | str, name: str = "onnxruntime", threads: int | None = None,
                 optimized_path: str | None = None) -> None:  # fmt: skip
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if optimized_path:
            opts.optimized_model_filepath = optimized_path
        data = model if isinstance(model, str) else model.SerializeToString()
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = name

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0])
