"""From collected statistics to quantization ranges, per method; serializable as ranges.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rescompile.calibrate.collect import TensorStats
from rescompile.errors import UsageError

METHODS = ("max",)
_EPS = 1e-8


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one tensor: symmetric ``amax`` and the observed min/max."""

    amax: float
    min: float
    max: float
    method: str


@dataclass
class CalibrationResult:
    ranges: dict[str, TensorRange]
    method: str
    samples: int
    key: dict[str, str] = field(default_factory=dict)  # sha256 of model and data+preprocessing

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "schema": "rescompile.ranges/1",
            "method": self.method,
            "samples": self.samples,
            "key": self.key,
            "tensors": {k: asdict(v) for k, v in sorted(self.ranges.items())},
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CalibrationResult:
        doc = json.loads(text)
        return cls({k: TensorRange(**v) for k, v in doc["tensors"].items()}, doc["method"], doc["samples"], doc["key"])


def range_for(stats: TensorStats, method: str) -> TensorRange:
    if method == "max":
        amax = stats.amax
    else:
        raise UsageError(f"unknown calibration method {method!r}", hint="one of: " + ", ".join(METHODS))
    return TensorRange(max(float(amax), _EPS), float(stats.min), float(stats.max), method)


def compute_ranges(stats: dict[str, TensorStats], method: str = "max") -> dict[str, TensorRange]:
    """Ranges for every tensor from one collection pass; switching method re-runs nothing."""
    return {name: range_for(s, method) for name, s in stats.items()}
