"""Metrics, gates (flags, YAML, invalid thresholds), latency measurement, saved references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.runtime.runners import OnnxRuntimeRunner, onnx_precision
from rescompile.validate.gates import evaluate_gates, load_gates, merge_gates, resolve_gates
from rescompile.validate.latency import MAX_RUNS, MIN_BUDGET_S, Latency, LatencySettings, measure_latency, measure_runners
from rescompile.validate.metrics import Accuracy, Agreement, TopK, accuracy, agreement, compare_outputs, per_class_delta
from rescompile.validate.reference import ReferenceOutputs, ValidationInputs, load_reference, save_reference
from rescompile.validate.run import Measurement


def _logits(labels: np.ndarray, classes: int = 4) -> np.ndarray:
    out = np.zeros((len(labels), classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def test_accuracy_agreement_and_per_class_on_known_logits():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    ref = _logits(labels)
    wrong = labels.copy()
    wrong[[0, 1]] = 1  # the candidate misses both class-0 samples
    cand = _logits(wrong)
    assert accuracy(ref, labels).top1 == 100.0
    assert accuracy(cand, labels).top1 == 75.0
    agr = agreement(ref, cand)
    assert agr.top1 == 75.0 and agr.cosine_min == pytest.approx(0.0) and agr.max_abs_error == 1.0
    worst = per_class_delta(ref, cand, labels)[0]
    assert (worst.label, worst.delta, worst.samples) == (0, -100.0, 2)
    m = compare_outputs(ref, cand, labels)
    assert m.accuracy.top1_drop == 25.0 and m.accuracy.candidate.top1 == 75.0 and m.per_class[0].label == 0
    both = {"reference": {"top1": 100.0, "top5": 100.0}, "candidate": {"top1": 75.0, "top5": 100.0}}
    interval = m.to_dict()["accuracy"].pop("top1_drop_interval")
    assert m.to_dict()["accuracy"] == {**both, "top1_drop": 25.0, "top1_drop_interval": interval}
    # the paired drop: both misses are FP32-right/INT8-wrong (b = 2, c = 0 of 8); exact McNemar p = 2 * 0.5^2
    assert (interval["ref_only"], interval["cand_only"], interval["n"], interval["method"]) == (2, 0, 8, "tango")
    assert interval["lo"] < 25.0 < interval["hi"] and interval["p_exact"] == pytest.approx(0.5)


def test_compare_outputs_refuses_mismatched_shapes():
    with pytest.raises(UsageError, match="same model"):
        compare_outputs(np.zeros((4, 3)), np.zeros((4, 5)), None)


def _lat(runner: str, role: str, batch: int, p99: float) -> Latency:
    return Latency(runner, role, batch, 3, 0, p99 / 2, p99, p99, p99, p99 / 2, p99, batch / p99 * 2000, 100.0)


def _report(drop=0.4, agree=99.0, cosine=0.999, p99=5.0, speed=1.5):
    """A measurement with exactly the values the gates read (typed, as validate makes it)."""
    return Measurement(
        source="val",
        samples=8,
        reference="pytorch-fp32",
        candidate="onnxruntime-int8",
        baseline="onnxruntime-fp32",
        accuracy=Accuracy(TopK(90.0, 99.0), TopK(None if drop is None else 90.0 - drop, 99.0), drop),
        agreement=Agreement(agree, cosine, cosine, 0.1, 0.01),
        latency=[
            _lat("onnxruntime-fp32", "baseline", 1, 9.0),
            _lat("onnxruntime-int8", "candidate", 1, p99),
            _lat("onnxruntime-int8", "candidate", 8, 50.0),
        ],
        speedup={"1": speed, "8": 1.1},
    )


def test_every_gate_passes_and_fails_with_metric_value_threshold():
    gates = Gates(max_top1_drop=0.5, min_agreement=98, min_cosine=0.99, max_p99_ms=6, min_speedup=1.2)
    ok = evaluate_gates(_report(), gates)
    assert [g.name for g in ok] == ["max-top1-drop", "min-agreement", "min-cosine", "max-p99-ms", "min-speedup"]
    assert all(g.passed for g in ok)
    bad = evaluate_gates(_report(drop=2.0, agree=90, cosine=0.9, p99=7.5, speed=0.8), gates)
    assert not any(g.passed for g in bad)
    lines = [g.line() for g in bad]
    assert lines[0] == "FAIL max-top1-drop: accuracy.top1_drop = 2.00 points, threshold <= 0.5 points"
    assert lines[3] == "FAIL max-p99-ms: latency.candidate.batch1.p99_ms = 7.500 ms, threshold <= 6 ms"
    assert lines[4] == "FAIL min-speedup: speedup.batch1.p50 = 0.800x, threshold >= 1.2x"


def test_latency_gates_read_the_configured_batch():
    g, *floor = evaluate_gates(_report(), Gates(max_p99_ms=40, latency_batch=8))
    assert g.metric == "latency.candidate.batch8.p99_ms" and g.value == 50.0 and not g.passed
    assert [f.name for f in floor] == ["floor_cosine", "floor_margin_agreement", "floor_top1_drop"]  # no accuracy gate: the floor


def test_gate_without_labels_fails_and_says_why():
    (g,) = evaluate_gates(_report(drop=None), Gates(max_top1_drop=1.0))
    assert not g.passed and "no labels" in g.message


@pytest.mark.parametrize(
    "gates",
    [
        Gates(max_top1_drop=-1),
        Gates(min_agreement=101),
        Gates(min_cosine=1.5),
        Gates(max_p99_ms=0),
        Gates(min_speedup=-2),
        Gates(min_cosine=math.nan),
        Gates(latency_batch=0),
    ],
)
def test_invalid_thresholds_are_usage_errors(gates):
    with pytest.raises(UsageError) as exc:
        resolve_gates(None, gates)
    assert exc.value.exit_code == 2


def test_yaml_gates_hyphens_or_underscores_and_flags_override(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("gates:\n  max-top1-drop: 1.0\n  min_agreement: 97\n  max-p99-ms: 30\n")
    recipe = load_gates(path)
    assert recipe == Gates(max_top1_drop=1.0, min_agreement=97, max_p99_ms=30)
    merged = merge_gates(recipe, Gates(max_top1_drop=0.25))
    assert (merged.max_top1_drop, merged.min_agreement, merged.max_p99_ms) == (0.25, 97, 30)


@pytest.mark.parametrize(
    "text, match",
    [
        ("max-top1-dorp: 1\n", "unknown gate"),
        ("min-cosine: high\n", "must be a number"),
        ("min-agreement: 120\n", "out of range"),
        ("[1, 2\n", "not valid YAML"),
        ("", "holds no gates"),
    ],
)
def test_bad_yaml_gates_are_usage_errors(tmp_path, text, match):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_gates(path)


def test_latency_fixed_count_and_budget(tiny_onnx, tiny_data):
    runner = OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32", threads=1)
    lat = measure_latency(runner, tiny_data[:2], 4, warmup=1, runs=7)
    assert lat.runs == 7 and len(lat.samples_ms) == 7 and lat.batch == 4
    assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    assert lat.throughput == pytest.approx(4 / (lat.p50_ms / 1000))
    assert lat.peak_rss_mib > 10


class ClockedRunner:
    """A runner on a fake clock: each call costs ``ms_per_sample`` per sample of the batch, and nothing else takes time.

    The budget rules are then exact: a real clock also counts the loop's own overhead, which the samples do not.
    """

    name = "clocked"

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ms_per_sample: float = 1.0) -> None:
        import types

        from rescompile.validate import latency

        self.now, self.calls, self.ms = 0.0, 0, ms_per_sample
        monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: self.now))

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.now += self.ms * len(x) / 1000.0
        return x


def test_latency_budget_is_a_stopping_rule(monkeypatch):
    runner = ClockedRunner(monkeypatch)
    # 50 ms of 10 ms calls, no warm-up: the fifth run spends the budget and is the last.
    timed = measure_latency(runner, np.zeros((1, 2), np.float32), 10, warmup=0, budget_s=0.05)
    assert (timed.runs, timed.warmup, runner.calls) == (5, 0, 5) and timed.samples_ms == [10.0] * 5
    # The warm-up counts against the budget and stops after its first call once a quarter of it is spent.
    runner.calls = 0
    warmed = measure_latency(runner, np.zeros((1, 2), np.float32), 20, warmup=5, budget_s=0.05)
    assert (warmed.warmup, warmed.runs, runner.calls) == (1, 3, 4)  # 20 ms warm-up >= 12.5 ms; then 3 runs reach 80 ms
    # At least 3 timed runs however small the budget; at most max_runs however large.
    assert measure_latency(runner, np.zeros((1, 2), np.float32), 1, warmup=0, budget_s=1e-6).runs == 3
    assert measure_latency(runner, np.zeros((1, 2), np.float32), 1, warmup=0, budget_s=100.0, max_runs=7).runs == 7


def test_latency_settings_reject_nonsense():
    for bad in (LatencySettings(batches=()), LatencySettings(runs=2), LatencySettings(budget_s=0.0)):
        with pytest.raises(UsageError):
            bad.check()


def test_onnx_precision_and_fp16_runner_casts(tiny_onnx, tiny_data):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    assert onnx_precision(tiny_onnx) == "fp32"
    half = convert_float_to_float16(tiny_onnx, keep_io_types=False)
    assert onnx_precision(half) == "fp16"
    out = OnnxRuntimeRunner(half, "onnxruntime-fp16").infer(tiny_data[:4])
    ref = OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32").infer(tiny_data[:4])
    assert out.dtype == np.float32 and np.allclose(out, ref, atol=0.05)


def test_saved_reference_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    ref = ReferenceOutputs(
        rng.standard_normal((6, 3)).astype(np.float32),
        np.arange(6) % 3,
        rng.standard_normal((6, 1, 4, 4)).astype(np.float32),
        {"runner": "pytorch-fp32", "source": "x", "class_names": ["cat", "dog", "eel"]},
    )
    path = tmp_path / "ref.npz"
    save_reference(path, ref)
    back = load_reference(path)
    assert np.array_equal(back.logits, ref.logits) and np.array_equal(back.inputs, ref.inputs)
    assert np.array_equal(back.labels, ref.labels) and back.runner == "pytorch-fp32"
    assert back.as_inputs().class_names == ["cat", "dog", "eel"]  # reports on the device name the classes
    batches = list(back.as_inputs().batches(4))
    assert [len(x) for x, _ in batches] == [4, 2] and batches[1][1].tolist() == [1, 2]
    assert ValidationInputs.from_arrays("x", ref.inputs, None).head(5).shape == (5, 1, 4, 4)


def test_load_reference_rejects_other_npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(UsageError, match="not a rescompile reference"):
        load_reference(path)


def test_latency_auto_mode_stays_in_its_budget_and_says_what_it_skipped(monkeypatch):
    clocked = ClockedRunner(monkeypatch)  # 1 ms per sample on a fake clock
    sample = np.zeros((2, 3), np.float32)
    # Batch 1 gets half of the 1 s minimum budget and stops at 5 warm-ups and MAX_RUNS runs of 1 ms (35 ms). Batch 100 gets
    # half of the 0.965 s left: 2 warm-ups of 100 ms (a quarter spent) and the 3 runs that spend it. One warm-up and 3 runs
    # of batch 2000 (8 s) cannot fit in the 0.465 s then left: skipped, at no cost.
    recs, plan = measure_runners([(clocked, "candidate")], sample, LatencySettings(batches=(1, 100, 2000)), other_s=0.0)
    assert plan.mode == "auto" and plan.budget_s == MIN_BUDGET_S and not plan.brief
    assert [(r.batch, r.warmup, r.runs) for r in recs] == [(1, 5, MAX_RUNS), (100, 2, 3)]
    assert [(k.batch, k.reason) for k in plan.skipped] == [(2000, "3 runs estimated at 8.0 s; 0.5 s of the 1.0 s latency budget left")]
    assert plan.spent_s == 0.535 and clocked.calls == 40


def test_latency_explicit_runs_brief_and_required_batches(tiny_onnx, tiny_data):
    runner = OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32", threads=1)
    runners = [(runner, "candidate")]
    # Explicit runs: exactly N at every batch size; brief: the smallest batch, 3 runs, one warm-up.
    recs, plan = measure_runners(runners, tiny_data[:2], LatencySettings(batches=(2, 1), runs=4, warmup=0))
    assert plan.mode == "runs" and [(r.batch, r.runs) for r in recs] == [(1, 4), (2, 4)]
    recs, plan = measure_runners(runners, tiny_data[:2], LatencySettings(batches=(1, 8), brief=True), other_s=100.0)
    assert plan.brief and [(r.batch, r.runs, r.warmup) for r in recs] == [(1, 3, 1)]
    # A batch size a latency gate reads is timed whatever the budget or brevity.
    recs, _ = measure_runners(runners, tiny_data[:2], LatencySettings(batches=(1, 8), brief=True, required=(8,)))
    assert [r.batch for r in recs] == [1, 8]


def test_latency_runs_and_budget_are_exclusive():
    with pytest.raises(UsageError, match="not both"):
        LatencySettings(runs=5, budget_s=1.0).check()
