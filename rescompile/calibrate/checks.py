"""Checks of the calibration data and ranges: degenerate data fails or warns before it costs accuracy.

Errors (exit 2, nothing is quantized): every calibration input has the same value (no range to
calibrate), and ranges that are not finite or absurdly large (``|x|`` beyond 1e6: data in the wrong
units, e.g. 1e30). Warnings (console and report, the build goes on): float inputs that look like raw
0-255 pixels for a model whose preprocessing normalizes them, ranges that clip a large share of the
calibration values, and tiny calibration sets. Each rule, its threshold and why: docs/calibration.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rescompile.calibrate.collect import TensorStats
from rescompile.calibrate.ranges import TensorRange, clipped_share
from rescompile.data.preprocess import Preprocess
from rescompile.errors import UsageError

MIN_SAMPLES = 32  # fewer calibration samples: a warning (ModelOpt's ONNX PTQ guide: TensorRT recommends >= 500 for CNNs)
ABSURD_AMAX = 1e6  # a calibrated |x| beyond this: exit 2 (FP16, TensorRT's fallback precision, ends at 65504)
CLIP_WARN_SHARE = 0.01  # a range clipping more than 1% of a tensor's calibration values: a warning
PIXEL_FACTOR = 4.0  # float inputs in [0, 255] reaching 4x the largest |value| the recipe makes from pixels


@dataclass(frozen=True)
class CalibrationWarning:
    """One finding about the calibration: a stable ``code`` (for CI) and a message for people."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class InputRange:
    """What the calibration inputs (after preprocessing) spanned, and whether they were floats fed as they are."""

    min: float
    max: float
    count: int
    float_data: bool  # float arrays go to the model unchanged; uint8 pixels are normalized by the recipe

    @classmethod
    def from_stats(cls, stats: TensorStats, float_data: bool) -> InputRange:
        return cls(float(stats.min), float(stats.max), int(stats.count), float_data)


def recipe_bound(pre: Preprocess) -> float:
    """The largest ``|value|`` the recipe makes from pixels in [0, 1]: ``max |(p - mean) / std|``."""
    mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
    return float(np.max(np.maximum(np.abs(-mean / std), np.abs((1.0 - mean) / std))))


def check_inputs(inputs: InputRange, pre: Preprocess, source: str) -> list[CalibrationWarning]:
    """Refuse constant or absurd calibration inputs; warn about floats that look like raw pixels.

    Raises:
        UsageError: every input value is the same, or the values are not finite or beyond ``ABSURD_AMAX``.
    """
    if inputs.count == 0:
        return []
    if not (math.isfinite(inputs.min) and math.isfinite(inputs.max)):
        raise UsageError(f"{source}: the calibration inputs hold NaN or Inf")
    peak = max(abs(inputs.min), abs(inputs.max))
    if peak > ABSURD_AMAX:
        raise UsageError(
            f"{source}: calibration inputs reach |x| = {peak:.3g}; INT8 ranges from such data are meaningless",
            hint="check the data's units and preprocessing (images normalized to a few units around 0)",
        )
    if inputs.min == inputs.max:
        raise UsageError(
            f"{source}: every calibration input value is {inputs.min:g}: constant data give no range to calibrate",
            hint="calibrate on real samples of what the model will see (a few hundred images)",
        )
    bound = recipe_bound(pre)
    if inputs.float_data and inputs.min >= 0.0 and PIXEL_FACTOR * bound < inputs.max <= 255.0 * (1 + 1e-6):
        return [
            CalibrationWarning(
                "raw-pixels",
                f"{source}: float inputs span [{inputs.min:g}, {inputs.max:g}], like raw 0-255 pixels, but float arrays "
                f"go to the model unchanged and its preprocessing ({pre.name}: /255, mean {list(pre.mean)}, std "
                f"{list(pre.std)}) makes values within +-{bound:.2f}; save the images as uint8 to have them normalized, "
                "or normalize the floats the same way",
            )
        ]
    return []


def check_ranges(stats: dict[str, TensorStats], ranges: dict[str, TensorRange]) -> list[CalibrationWarning]:
    """Refuse non-finite or absurd ranges; warn when ranges clip more than 1% of a tensor's calibration values.

    Raises:
        UsageError: a range that is not finite or beyond ``ABSURD_AMAX`` (the tensor is named).
    """
    for name, r in ranges.items():
        if not math.isfinite(r.amax) or r.amax > ABSURD_AMAX:
            raise UsageError(
                f"calibrated range of {name!r} is |x| <= {r.amax:.3g}; INT8 ranges this large are meaningless",
                hint="check the data's units and preprocessing (images normalized to a few units around 0)",
            )
    clipping = []
    for name, r in ranges.items():
        s = stats.get(name)
        if s is None or s.hist_count == 0:
            continue
        share = clipped_share(s.abs_hist(), s.width, r.amax)
        if share > CLIP_WARN_SHARE:
            clipping.append((share, name, r.method))
    if not clipping:
        return []
    clipping.sort(key=lambda c: (-c[0], c[1]))
    share, name, method = clipping[0]
    return [
        CalibrationWarning(
            "ranges-clip",
            f"{len(clipping)} calibrated range(s) clip more than {CLIP_WARN_SHARE:.0%} of their calibration values; "
            f"the most: {name!r} ({method}) clips {share:.1%}. Clipping that much loses information, not only outliers: "
            "consider --calib-method max or a higher --percentile",
        )
    ]


def check_samples(samples: int, source: str) -> list[CalibrationWarning]:
    """Warn when the calibration set is tiny (ranges from a handful of images vary from set to set)."""
    if samples >= MIN_SAMPLES:
        return []
    return [
        CalibrationWarning(
            "tiny-calibration-set",
            f"{source}: {samples} calibration sample(s); ranges from fewer than {MIN_SAMPLES} vary from one set to "
            "the next (a few hundred representative images are usual)",
        )
    ]
