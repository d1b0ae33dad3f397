"""Calibration that cannot silently ruin a model: the guarded entropy rule and the degenerate-data checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rescompile.calibrate.checks import (
    ABSURD_AMAX,
    MIN_SAMPLES,
    InputRange,
    check_inputs,
    check_ranges,
    check_samples,
    recipe_bound,
)
from rescompile.calibrate.collect import TensorStats
from rescompile.calibrate.methods import entropy_amax
from rescompile.calibrate.ranges import MAX_CLIP_SHARE, TensorRange, analyze, clipped_share, compute_ranges, entropy_rule
from rescompile.calibrate.run import calibrate
from rescompile.data.preprocess import PRESETS, Preprocess
from rescompile.data.sources import open_source
from rescompile.errors import UsageError
from rescompile.quantize import plan_qdq

FMNIST = PRESETS["fashion-mnist"]
RAW = Preprocess("raw16", 16, None, (0.5,), (0.25,), 1)


def _stats(values: np.ndarray, name: str = "t", graph_input: bool = False) -> TensorStats:
    s = TensorStats(name, graph_input=graph_input)
    s.update(np.asarray(values, np.float32))
    return s


def _pixels_like(rng: np.random.Generator, n: int = 200_000) -> np.ndarray:
    """Fashion-MNIST-like normalized pixels: half background (one value), the rest spread over 256 levels."""
    px = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 256, n))
    return (px / 255.0 - FMNIST.mean[0]) / FMNIST.std[0]


def test_tensorrt_kl_clips_a_pixel_input_and_the_rule_keeps_its_range() -> None:
    x = _pixels_like(np.random.default_rng(0))
    s = _stats(x, "input", graph_input=True)
    kl = entropy_amax(s.abs_hist(), s.width, s.amax)
    assert clipped_share(s.abs_hist(), s.width, kl) > 0.1  # the failure: KL takes the background spike for the range
    assert entropy_rule(s) == (s.amax, "graph-input")
    # The same values as an inner tensor: few distinct levels make a sparse histogram, also kept at max.
    inner = _stats(x, "inner")
    assert entropy_rule(inner) == (inner.amax, "sparse")
    assert analyze(inner)["entropy_rule"] == "sparse" and analyze(inner)["amax"]["entropy"] == inner.amax


def test_entropy_keeps_tensorrt_kl_on_dense_relu_activations() -> None:
    x = np.maximum(np.random.default_rng(1).standard_normal(400_000), 0) * np.random.default_rng(2).gamma(2, 1, 400_000)
    s = _stats(x)
    amax, rule = entropy_rule(s)
    assert rule == "kl" and amax == entropy_amax(s.abs_hist(), s.width, s.amax) < s.amax  # TensorRT's own threshold


def test_entropy_never_clips_more_than_the_guard() -> None:
    rng = np.random.default_rng(3)
    # 90% of the values packed near zero, 10% spread 300x wider: KL trades the wide part for resolution near zero.
    x = np.concatenate([rng.exponential(0.003, 360_000), rng.exponential(1.0, 40_000)])
    s = _stats(x)
    kl = entropy_amax(s.abs_hist(), s.width, s.amax)
    assert clipped_share(s.abs_hist(), s.width, kl) > MAX_CLIP_SHARE
    amax, rule = entropy_rule(s)
    assert rule == "kl-clip-guard" and kl < amax <= s.amax
    assert clipped_share(s.abs_hist(), s.width, amax) <= MAX_CLIP_SHARE


def test_constant_inputs_are_refused() -> None:
    for value in (0.0, 0.5):
        with pytest.raises(UsageError, match=f"every calibration input value is {value:g}"):
            check_inputs(InputRange(value, value, 1000, True), FMNIST, "calib.npy")


@pytest.mark.parametrize("peak", [1e30, ABSURD_AMAX * 2])
def test_absurd_inputs_are_refused(peak: float) -> None:
    with pytest.raises(UsageError, match="calibration inputs reach"):
        check_inputs(InputRange(-1.0, peak, 1000, True), FMNIST, "calib.npy")


def test_float_raw_pixels_warn_but_normalized_floats_and_uint8_do_not() -> None:
    (w,) = check_inputs(InputRange(0.0, 255.0, 1000, True), FMNIST, "calib.npy")
    assert w.code == "raw-pixels" and "calib.npy" in w.message and "uint8" in w.message
    assert check_inputs(InputRange(-0.81, 2.02, 1000, True), FMNIST, "calib.npy") == []  # what the recipe makes
    assert check_inputs(InputRange(0.0, 255.0, 1000, False), FMNIST, "calib.npz") == []  # pixels, normalized on read
    # A recipe whose model takes 0-255 itself (std 1/255): such floats are what it expects.
    raw255 = Preprocess("raw255", 28, None, (0.0,), (1 / 255,), 1)
    assert recipe_bound(raw255) == pytest.approx(255.0)
    assert check_inputs(InputRange(0.0, 255.0, 1000, True), raw255, "calib.npy") == []


def test_ranges_that_clip_much_warn_and_absurd_ranges_are_refused() -> None:
    s = _stats(np.random.default_rng(5).standard_normal(100_000))
    stats = {"a": s}
    assert check_ranges(stats, compute_ranges(stats, "max")) == []
    assert check_ranges(stats, compute_ranges(stats, "percentile", 99.99)) == []
    (w,) = check_ranges(stats, compute_ranges(stats, "percentile", 90.0))
    assert w.code == "ranges-clip" and "'a' (percentile) clips 1" in w.message  # ~10% beyond the 90th percentile
    for bad in (float("inf"), ABSURD_AMAX * 10):
        with pytest.raises(UsageError, match="calibrated range of 'a'"):
            check_ranges(stats, {"a": TensorRange(bad, -bad, bad, "max")})


def test_tiny_calibration_sets_warn() -> None:
    (w,) = check_samples(MIN_SAMPLES - 1, "calib.npy")
    assert w.code == "tiny-calibration-set" and f"{MIN_SAMPLES - 1} calibration sample" in w.message
    assert check_samples(MIN_SAMPLES, "calib.npy") == []


def _npy(tmp_path: Path, name: str, x: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, x.astype(np.float32))
    return path


def test_calibrate_stage_refuses_zeros_and_huge_data_and_warns_on_pixels(tmp_path: Path, tiny_onnx: onnx.ModelProto) -> None:
    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    shape = (40, 1, 16, 16)
    with pytest.raises(UsageError, match="every calibration input value is 0"):
        calibrate(tiny_onnx, tensors, open_source(_npy(tmp_path, "zeros.npy", np.zeros(shape))), RAW)
    with pytest.raises(UsageError, match="calibration inputs reach"):
        calibrate(tiny_onnx, tensors, open_source(_npy(tmp_path, "huge.npy", np.random.default_rng(0).random(shape) * 1e30)), RAW)
    pixels = np.random.default_rng(0).integers(0, 256, shape)
    run = calibrate(tiny_onnx, tensors, open_source(_npy(tmp_path, "px.npy", pixels)), RAW)
    assert [w.code for w in run.warnings] == ["raw-pixels"]
    tiny = calibrate(
        tiny_onnx, tensors, open_source(_npy(tmp_path, "few.npy", np.random.default_rng(1).standard_normal((4, 1, 16, 16)))), RAW
    )
    assert [w.code for w in tiny.warnings] == ["tiny-calibration-set"]
    # The findings come back when a rebuild reuses the cached ranges.
    (tmp_path / "ranges.json").write_text(run.ranges_json)
    (tmp_path / "calib_stats.npz").write_bytes(run.stats_npz)
    again = calibrate(tiny_onnx, tensors, open_source(tmp_path / "px.npy"), RAW, previous=tmp_path)
    assert again.reused == "ranges" and [w.code for w in again.warnings] == ["raw-pixels"]
