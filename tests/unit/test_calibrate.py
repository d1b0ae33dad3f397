"""Calibration: streaming statistics, the four methods and auto, ranges.json, caches, TensorRT cache text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from rescompile.calibrate.cache import load_stats, stats_to_bytes
from rescompile.calibrate.collect import CollectSettings, TensorStats, activation_tensors, collect_stats, rebin, with_outputs
from rescompile.calibrate.methods import entropy_amax, entropy_divergences, expected_mse, mse_amax, quantization_error
from rescompile.calibrate.ranges import METHODS, CalibrationResult, analyze, calibration_result, compute_ranges
from rescompile.calibrate.run import calibrate
from rescompile.calibrate.trt_cache import from_trt_cache, scale_hex, to_trt_cache, version_code
from rescompile.data.preprocess import Preprocess
from rescompile.data.sources import open_source
from rescompile.errors import UsageError
from rescompile.quantize import plan_qdq

RAW = Preprocess("raw16", 16, None, (0.5,), (0.25,), 1)


def _signed_reference(values: np.ndarray, edge: float, bins: int) -> np.ndarray:
    idx = np.floor(values.astype(np.float64) / edge * bins).astype(np.int64) + bins
    return np.bincount(np.clip(idx, 0, 2 * bins - 1), minlength=2 * bins)


def test_streaming_histogram_equals_one_shot_and_state_stays_fixed() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.1, 1.0, 0.5, 7.0, 3.0)]
    s = TensorStats("t", bins=256)
    sizes = set()
    for c in chunks:
        s.update(c)
        sizes.add(s.hist.nbytes)
    allv = np.concatenate(chunks)
    assert (s.min, s.max, s.count) == (float(allv.min()), float(allv.max()), allv.size)
    assert s.edge == 32.0 and sizes == {2 * 256 * 8}  # power-of-two range; memory independent of the data seen
    one_shot = TensorStats("t", bins=256)
    one_shot.update(allv)
    np.testing.assert_array_equal(s.hist, one_shot.hist)  # growth by merging bins is exact
    assert np.abs(s.hist - _signed_reference(allv, s.edge, 256)).sum() <= 4  # float32 rounding on a bin edge
    folded = np.bincount(np.minimum(np.abs(allv) / s.width, 255).astype(int), minlength=256)
    assert np.abs(s.abs_hist() - folded).sum() <= 4  # negative values exactly on a bin edge fold one bin lower


def test_rebin_merges_groups_of_bins() -> None:
    h = np.arange(16)
    np.testing.assert_array_equal(rebin(h, 2), [0, 0, 0, 0, 1, 5, 9, 13, 17, 21, 25, 29, 0, 0, 0, 0])
    np.testing.assert_array_equal(rebin(h, 64), [0] * 7 + [28, 92] + [0] * 7)


def _brute_kl(h: np.ndarray, i: int, levels: int = 128) -> float:
    """The published description, one candidate at a time (slow reference)."""
    p = h[:i].astype(float).copy()
    p[i - 1] += h[i:].sum()
    group = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
    q = np.zeros(i)
    for g in range(levels):
        members = group == g
        nz = members & (h[:i] > 0)
        if nz.any():
            q[nz] = h[:i][members].sum() / nz.sum()
    p, q = p / p.sum(), q / q.sum()
    if ((p > 0) & (q == 0)).any():
        return np.inf
    m = p > 0
    return float((p[m] * np.log(p[m] / q[m])).sum())


def test_vectorized_entropy_matches_the_published_algorithm() -> None:
    rng = np.random.default_rng(1)
    x = np.abs(np.concatenate([rng.standard_normal(20000), rng.standard_normal(200) * 6]))
    h = np.bincount(np.minimum((x / x.max() * 1500).astype(int), 1499), minlength=2048)
    h[700] = 0  # an empty bin inside the range: Q must stay 0 there
    cands, kl = entropy_divergences(h)
    assert cands[0] == 128 and cands[-1] == 1500
    for j in (0, 1, 57, 571, 1000, len(cands) - 1):
        assert kl[j] == pytest.approx(_brute_kl(h, int(cands[j])), rel=1e-9, abs=1e-12)
    flat = h.copy()
    flat[0] = flat[1]  # the zero bin takes its neighbour's count before the search
    cands, kl = entropy_divergences(flat)
    assert entropy_amax(h, 0.01, 15.0) == pytest.approx((cands[np.argmin(kl)] + 0.5) * 0.01)


def test_entropy_is_not_dragged_down_by_relu_zeros() -> None:
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal(400000), 0)  # half exact zeros
    s = TensorStats("relu")
    s.update(x.astype(np.float32))
    assert entropy_amax(s.abs_hist(), s.width, s.amax) > 0.5 * s.amax


def test_mse_search_is_the_argmin_of_expected_error_and_auto_the_least_error() -> None:
    rng = np.random.default_rng(2)
    s = TensorStats("t")
    s.update(np.abs(np.append(rng.standard_normal(200000), [40.0, -50.0, 45.0])).astype(np.float32))  # rare outliers
    h, w = s.abs_hist(), s.width
    a = mse_amax(h, w, s.amax)
    grid = np.arange(128, 2049) * w
    grid = grid[grid <= s.amax]
    assert expected_mse(h, w, a)[0] <= expected_mse(h, w, grid).min() + 1e-15
    assert a < s.amax and expected_mse(h, w, a)[0] < expected_mse(h, w, s.amax)[0]
    info = analyze(s)
    errs = quantization_error(h, w, [info["amax"][m] for m in ("max", "percentile", "entropy", "mse")])
    assert info["auto"] == ("max", "percentile", "entropy", "mse")[int(np.argmin(errs))]
    assert info["error"]["max"] > info["error"][info["auto"]]


def test_every_method_from_one_pass_with_meaningful_asymmetric_ranges(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    stats = collect_stats(tiny_onnx, tensors, [tiny_data[:10], tiny_data[10:]])
    by_method = {m: compute_ranges(stats, m) for m in METHODS}
    for m, ranges in by_method.items():
        for t, r in ranges.items():
            assert 0 < r.amax <= stats[t].amax * (1 + 1e-6)
            assert -r.amax <= r.min <= 0 <= r.max <= r.amax or stats[t].min > 0
            assert r.min >= stats[t].min and r.max <= stats[t].max
            assert r.method == m or (m == "auto" and r.method in METHODS[:-1])
    relu_outputs = [t for t in tensors if stats[t].min == 0.0]
    assert relu_outputs and all(by_method["entropy"][t].min == 0.0 for t in relu_outputs)  # UINT8 range [0, amax]
    assert all(by_method["max"][t].amax == stats[t].amax for t in tensors)


def test_collection_matches_direct_statistics_whatever_the_chunking(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    import onnxruntime as ort

    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    small = collect_stats(tiny_onnx, tensors, [tiny_data[:7], tiny_data[7:]], CollectSettings(memory_budget=1))  # one image per run
    big = collect_stats(tiny_onnx, tensors, [tiny_data], CollectSettings(memory_budget=1 << 30))
    exposed = [t for t in tensors if t != tiny_onnx.graph.input[0].name]
    sess = ort.InferenceSession(with_outputs(tiny_onnx, exposed).SerializeToString(), providers=["CPUExecutionProvider"])
    direct = dict(zip(exposed, sess.run(exposed, {tiny_onnx.graph.input[0].name: tiny_data}), strict=True))
    direct[tiny_onnx.graph.input[0].name] = tiny_data
    for t in tensors:
        ref = TensorStats(t)
        ref.update(direct[t])
        for got in (small[t], big[t]):
            assert (got.min, got.max, got.count, got.edge) == pytest.approx((ref.min, ref.max, ref.count, ref.edge), rel=1e-6)
            assert np.abs(got.hist - ref.hist).sum() <= 2  # float rounding at a bin boundary at most


def test_nan_or_inf_activation_names_the_tensor(tiny_onnx: onnx.ModelProto) -> None:
    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    huge = np.full((2, 1, 16, 16), 3e38, np.float32)  # finite input; the first conv overflows
    with pytest.raises(UsageError, match=r"activation '.+' holds NaN or Inf") as exc:
        collect_stats(tiny_onnx, tensors, [huge])
    assert "input" not in exc.value.message
    with pytest.raises(UsageError, match="no tensor 'nope'"):
        collect_stats(tiny_onnx, ["nope"], [huge])


def test_ranges_json_round_trip_and_stats_file_is_deterministic(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    stats = collect_stats(tiny_onnx, tensors, [tiny_data])
    res = calibration_result(stats, "auto", len(tiny_data), key={"model_sha256": "a", "data_sha256": "b"})
    text = res.to_json()
    back = CalibrationResult.from_json(text)
    assert back.ranges == res.ranges and back.to_json() == text
    doc = json.loads(text)
    some = doc["tensors"][tensors[0]]
    assert set(some["summary"]["amax"]) == {"max", "percentile", "entropy", "mse"} and some["summary"]["count"] > 0
    blob = stats_to_bytes(stats, res.key, 24)
    assert blob == stats_to_bytes(stats, res.key, 24)
    with pytest.raises(UsageError, match="not a rescompile ranges.json"):
        CalibrationResult.from_json("{}")


def test_cache_reuse_and_stale_caches(tmp_path: Path, tiny_onnx: onnx.ModelProto, tiny_npz: Path) -> None:
    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    src = open_source(tiny_npz)
    batches = []
    first = calibrate(tiny_onnx, tensors, src, RAW, method="max", on_batch=batches.append)
    assert first.reused is None and sum(batches) == 40
    (tmp_path / "ranges.json").write_text(first.ranges_json)
    (tmp_path / "calib_stats.npz").write_bytes(first.stats_npz)
    batches.clear()
    again = calibrate(tiny_onnx, tensors, src, RAW, method="max", previous=tmp_path, on_batch=batches.append)
    assert again.reused == "ranges" and again.ranges_json == first.ranges_json and not batches
    switched = calibrate(tiny_onnx, tensors, src, RAW, method="entropy", previous=tmp_path, on_batch=batches.append)
    assert switched.reused == "statistics" and not batches  # a new method without running the model
    assert switched.result.ranges == compute_ranges(load_stats(tmp_path / "calib_stats.npz")[0], "entropy")
    other_pre = Preprocess("raw16", 16, None, (0.4,), (0.25,), 1)
    stale_data = calibrate(tiny_onnx, tensors, open_source(tiny_npz, limit=30), RAW, previous=tmp_path)
    stale_pre = calibrate(tiny_onnx, tensors, src, other_pre, previous=tmp_path)
    assert stale_data.reused is None and stale_pre.reused is None
    assert stale_pre.result.key["model_sha256"] == first.result.key["model_sha256"]
    assert stale_pre.result.key["data_sha256"] != first.result.key["data_sha256"]


def test_trt_cache_round_trip_and_format() -> None:
    assert scale_hex(1.0) == "3f800000" and scale_hex(np.float32(1 / 127)) == "3c010204"
    assert version_code("10.3.0") == 100300 and version_code("8.6.1") == 8601
    ranges = compute_ranges({"a": _stats([0.0, 127.0]), "b:x": _stats([-2.5, 1.0])}, "max")
    with pytest.raises(UsageError, match="cannot be written"):
        to_trt_cache(ranges)
    ranges = {"conv1_out": ranges["a"], "/layer1/Relu_output_0": ranges["b:x"]}
    text = to_trt_cache(ranges, version="10.3.0")
    assert text.splitlines() == ["TRT-100300-EntropyCalibration2", "/layer1/Relu_output_0: 3ca14285", "conv1_out: 3f800000"]
    back, code, algo = from_trt_cache(text)
    assert (code, algo) == (100300, "EntropyCalibration2")
    for name, r in ranges.items():
        assert back[name].amax == pytest.approx(r.amax, rel=1e-6) and back[name].min == -back[name].amax
    assert to_trt_cache(back, version="10.3.0") == text
    with pytest.raises(UsageError, match="first line"):
        from_trt_cache("conv1_out: 3f800000\n")
    with pytest.raises(UsageError, match="line 2"):
        from_trt_cache("TRT-100300-EntropyCalibration2\nconv1_out 3f80\n")


def _stats(values: list[float]) -> TensorStats:
    s = TensorStats("t")
    s.update(np.asarray(values, np.float32))
    return s


def test_activation_tensors_lists_every_float_activation(tiny_onnx: onnx.ModelProto) -> None:
    names = activation_tensors(tiny_onnx)
    assert names[0] == tiny_onnx.graph.input[0].name
    assert set(plan_qdq(tiny_onnx).calibrated_tensors) <= set(names)
    assert tiny_onnx.graph.output[0].name in names


def test_sampled_histograms_keep_exact_extremes_and_close_ranges(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    tensors = plan_qdq(tiny_onnx).calibrated_tensors
    exact = collect_stats(tiny_onnx, tensors, [tiny_data], CollectSettings(memory_budget=1, sample=None))
    sampled = collect_stats(tiny_onnx, tensors, [tiny_data], CollectSettings(memory_budget=1, sample=256))  # stride 8 on 2048 values
    for t in tensors:
        e, s = exact[t], sampled[t]
        assert (s.min, s.max, s.count) == (e.min, e.max, e.count)  # every value
        stride = -(-(e.count // len(tiny_data)) // 256)  # per-image values / 256, rounded up
        assert e.hist_count == e.count and s.hist_count == int(s.hist.sum())
        assert abs(s.hist_count - e.count / stride) <= len(tiny_data)  # every stride-th value
        assert stride > 1 or t == tiny_onnx.graph.input[0].name
        assert compute_ranges({t: s}, "max")[t] == compute_ranges({t: e}, "max")[t]
        assert compute_ranges({t: s}, "mse")[t].amax == pytest.approx(compute_ranges({t: e}, "mse")[t].amax, rel=0.35)


def test_only_the_graph_input_needs_no_model_outputs(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    name = tiny_onnx.graph.input[0].name
    stats = collect_stats(tiny_onnx, [name], [tiny_data])
    assert (stats[name].min, stats[name].max) == (float(tiny_data.min()), float(tiny_data.max()))


def test_relu_outputs_keep_an_exact_minimum_when_sampled() -> None:
    x = np.full(64, 2.0, np.float32)
    x[5] = 0.5  # not in the sample (stride 4, phase 0): the minimum must still be exact
    s = TensorStats("r", nonnegative=True)
    s.update(x, stride=4)
    assert (s.min, s.max, s.hist_count) == (0.5, 2.0, 16)
    x[8] = 0.0  # in the sample: a Relu output's minimum is 0
    s2 = TensorStats("r", nonnegative=True)
    s2.update(x, stride=4)
    assert s2.min == 0.0
    x[9] = np.nan  # not in the sample, still caught by the full max
    with pytest.raises(UsageError, match="NaN or Inf"):
        TensorStats("r", nonnegative=True).update(x, stride=4)
