"""Calibration: one streaming pass of statistics through ONNX Runtime, then ranges per method."""

from rescompile.calibrate.collect import TensorStats, collect_stats
from rescompile.calibrate.ranges import CalibrationResult, TensorRange, compute_ranges

__all__ = ["CalibrationResult", "TensorRange", "TensorStats", "collect_stats", "compute_ranges"]
