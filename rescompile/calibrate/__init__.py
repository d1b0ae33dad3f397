"""Calibration: one streaming pass of statistics through ONNX Runtime, then ranges per method."""

from rescompile.calibrate.collect import TensorStats, collect_stats
from rescompile.calibrate.ranges import METHODS, CalibrationResult, TensorRange, calibration_result, compute_ranges

__all__ = [
    "METHODS",
    "CalibrationResult",
    "TensorRange",
    "TensorStats",
    "calibration_result",
    "collect_stats",
    "compute_ranges",
]
