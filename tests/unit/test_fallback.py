"""The auto-fallback search (docs/fallback.md): units that respect fusions, ranking on the optimized ONNX Runtime
session, step-back, the ranking/gate split, and a broken layer fixed in one step."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rescompile.calibrate import collect_stats, compute_ranges
from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.pipeline.fallback import (
    NEAR_BEST,
    RankScore,
    Unit,
    _pick,
    auto_fallback,
    block_units,
    describe_fusion,
    fusions_lost,
    ort_runner_factory,
    split_validation,
    weighted_macs,
)
from rescompile.pipeline.settings import FallbackSettings
from rescompile.quantize import Policy, insert_qdq, plan_qdq
from rescompile.quantize.verify import verify_int8
from rescompile.readers import from_mapping
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.validate.layerwise import keep_fp_pattern
from rescompile.validate.reference import ValidationInputs
from rescompile.validate.results import FallbackRecord
from rescompile.validate.run import ValidateSettings, compute_reference

BLOCK0 = "/blocks/blocks.0/Add"
CONV1 = "/blocks/blocks.0/conv1/Conv"
CONV2 = "/blocks/blocks.0/conv2/Conv"
BROKEN = "/blocks/blocks.0/relu/Relu_output_0"  # read by CONV2 only
SETTINGS = ValidateSettings(batch_size=16, latency=replace(ValidateSettings().latency, batches=(1,), runs=3, warmup=0))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((60, 1, 16, 16)).astype(np.float32)


def _search_inputs(fp32: onnx.ModelProto, data: np.ndarray, labels: np.ndarray | None = None):
    inputs = ValidationInputs.from_arrays("tiny", data, labels)
    return inputs, compute_reference(OnnxRuntimeRunner(fp32, "onnxruntime-fp32"), inputs, SETTINGS)


def _broken(fp32: onnx.ModelProto, data: np.ndarray, policy: str = Policy.TENSORRT):
    """The tiny ResNet quantized with CONV2's input range x100: a scale 100 times too coarse for that one layer."""
    plan = plan_qdq(fp32, policy)
    ranges = compute_ranges(collect_stats(fp32, plan.calibrated_tensors, [data]), "max")
    ranges[BROKEN] = replace(ranges[BROKEN], amax=ranges[BROKEN].amax * 100)
    return plan, ranges, insert_qdq(fp32, plan, ranges)


# --- (a) units respect fusions and keep the placement proof -------------------------------------


@pytest.mark.parametrize("policy", [Policy.TENSORRT, Policy.ONNXRUNTIME])
def test_a_block_unit_keeps_the_proof_and_gives_up_only_its_own_fusion(tiny_onnx, tiny_data, policy):
    plan = plan_qdq(tiny_onnx, policy)
    ranges = compute_ranges(collect_stats(tiny_onnx, plan.calibrated_tensors, [tiny_data]), "max")
    (block, _) = block_units(tiny_onnx, plan)
    assert block == Unit("block", BLOCK0, (CONV1, CONV2, BLOCK0), ("Conv", "Conv", "Add"))  # the projection stays its own layer
    kept = plan_qdq(tiny_onnx, policy, keep_fp=block.patterns)
    proof = verify_int8(tiny_onnx, insert_qdq(tiny_onnx, kept, ranges), kept)
    assert proof.ok, proof.violations
    assert [a for a, _ in fusions_lost(plan, kept)] == [BLOCK0]  # block 1 stays fused
    assert describe_fusion(block, fusions_lost(plan, kept)) == f"block {BLOCK0} kept in FP whole: no INT8 fusion of it remains to lose"


def test_a_the_last_conv_alone_breaks_the_tensorrt_fusion_and_says_so(tiny_onnx):
    plan = plan_qdq(tiny_onnx, Policy.TENSORRT)
    conv2 = Unit("layer", CONV2, (CONV2,), ("Conv",))
    lost = fusions_lost(plan, plan_qdq(tiny_onnx, Policy.TENSORRT, keep_fp=conv2.patterns))
    assert describe_fusion(conv2, lost) == f"Conv {CONV2} leaves INT8: Conv+Add+ReLU fusion of block {BLOCK0} lost"
    conv1 = Unit("layer", CONV1, (CONV1,), ("Conv",))
    assert fusions_lost(plan, plan_qdq(tiny_onnx, Policy.TENSORRT, keep_fp=conv1.patterns)) == []
    # ONNX Runtime's QLinearAdd does not depend on the Conv before it: the same layer costs no residual fusion there
    ort_plan = plan_qdq(tiny_onnx, Policy.ONNXRUNTIME)
    assert fusions_lost(ort_plan, plan_qdq(tiny_onnx, Policy.ONNXRUNTIME, keep_fp=conv2.patterns)) == []


# --- (c) the split ------------------------------------------------------------------------------


def test_c_ranking_and_gate_splits_are_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    a, b, c = split_validation(100, labels, 0), split_validation(100, labels, 0), split_validation(100, labels, 1)
    assert np.array_equal(a.ranking, b.ranking) and np.array_equal(a.gate, b.gate)
    assert not np.array_equal(a.ranking, c.ranking)
    assert len(a.ranking) == 50 and len(a.gate) == 50 and not set(a.ranking) & set(a.gate)
    assert sorted(np.concatenate([a.ranking, a.gate])) == list(range(100))
    assert np.bincount(labels[a.ranking]).tolist() == [25, 15, 8, 2] and a.stratified  # largest remainder: 7.5 -> 8, 2.5 -> 2
    big = split_validation(5000, None, 3)
    assert len(big.ranking) == 1000 and len(big.gate) == 4000 and not big.stratified
    with pytest.raises(UsageError, match="at least 2"):
        split_validation(1, None, 0)


# --- (d) ranking on the optimized ONNX Runtime session --------------------------------------------


def test_d_candidates_are_ranked_on_the_optimized_onnxruntime_session(tiny_onnx, data):
    plan, ranges, int8 = _broken(tiny_onnx, data)
    inputs, ref = _search_inputs(tiny_onnx, data)
    made: list[OnnxRuntimeRunner] = []
    default = ort_runner_factory(None)

    def factory(model: onnx.ModelProto) -> OnnxRuntimeRunner:
        made.append(default(model))  # the search's own default factory, recorded
        return made[-1]

    fb = auto_fallback(
        tiny_onnx,
        int8,
        plan,
        ranges,
        ref,
        inputs,
        FallbackSettings(2, Gates(min_cosine=0.999), unit="layer"),
        SETTINGS,
        runner_factory=factory,
    )
    assert fb.ranking_runs >= fb.candidates + 1 and len(made) == fb.ranking_runs + fb.gate_runs - 1  # the start model's runner serves both
    levels = {r.session.get_session_options().graph_optimization_level for r in made}
    assert levels == {ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    assert fb.to_dict()["ranking"]["runner"] == "onnxruntime-int8"
    assert (
        ort_runner_factory(None)(int8).session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )


# --- (e) one broken layer, fixed in one step ----------------------------------------------------


def test_e_a_broken_layer_is_fixed_in_one_step_and_the_search_stops(tiny_onnx, data):
    plan, ranges, int8 = _broken(tiny_onnx, data)
    inputs, ref = _search_inputs(tiny_onnx, data)
    fb = auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(4, Gates(min_cosine=0.999), unit="layer"), SETTINGS)
    assert not fb.initial.gates_passed and fb.passed
    assert [(s.unit.name, s.accepted) for s in fb.steps] == [(CONV2, True)] and fb.kept == [keep_fp_pattern(CONV2)]
    assert fb.stopped == "accuracy gates pass on the gate split"
    step = fb.steps[0]
    macs = weighted_macs(tiny_onnx)
    assert step.cost_macs_share == pytest.approx(macs[CONV2] / sum(macs.values()))
    assert step.rank == 1 and step.score.gain > 0 and step.fusions_lost == [BLOCK0]
    assert CONV2 in fb.plan.kept_fp and BROKEN not in {a.tensor for a in fb.plan.activations}
    assert step.pareto and fb.initial_pareto  # both on the front: one more accurate, the other with less FP
    assert fb.to_dict()["steps"][0]["unit"] == {"kind": "layer", "name": CONV2, "nodes": [CONV2], "ops": ["Conv"]}


def test_e_auto_units_fix_it_with_the_whole_block_not_a_half_fused_one(tiny_onnx, data):
    plan, ranges, int8 = _broken(tiny_onnx, data)
    inputs, ref = _search_inputs(tiny_onnx, data)
    fb = auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(4, Gates(min_cosine=0.999)), SETTINGS)
    assert fb.passed and [(s.unit.kind, s.unit.name) for s in fb.steps] == [("block", BLOCK0)]
    proof = verify_int8(tiny_onnx, fb.model, fb.plan)
    assert proof.ok and fb.steps[0].fusion.startswith(f"block {BLOCK0} kept in FP whole")


def test_e_a_huge_activation_channel_is_fixed_by_keeping_exactly_the_layer_that_reads_it(tiny_onnx, data):
    """Function-preserving: block 0's conv1 output channel 0 x300 (ReLU commutes), conv2's input channel 0 / 300.

    FP32 is unchanged; the per-tensor INT8 scale of conv2's input now serves one huge channel, and the rest round to 0."""
    fp32 = onnx.ModelProto.FromString(tiny_onnx.SerializeToString())
    nodes = {n.name: n for n in fp32.graph.node}
    inits = {t.name: t for t in fp32.graph.initializer}
    conv1, conv2 = nodes[CONV1], nodes[CONV2]
    for name, axis, factor in ((conv1.input[1], 0, 300.0), (conv1.input[2], 0, 300.0), (conv2.input[1], 1, 1 / 300.0)):
        w = numpy_helper.to_array(inits[name]).copy()
        np.moveaxis(w, axis, 0)[0] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(w.astype(np.float32), name))
    plan = plan_qdq(fp32, Policy.TENSORRT)
    ranges = compute_ranges(collect_stats(fp32, plan.calibrated_tensors, [data]), "max")
    int8 = insert_qdq(fp32, plan, ranges)
    inputs, ref = _search_inputs(fp32, data)
    assert np.allclose(ref.logits, _search_inputs(tiny_onnx, data)[1].logits, atol=1e-3)  # the same function
    fb = auto_fallback(fp32, int8, plan, ranges, ref, inputs, FallbackSettings(4, Gates(min_cosine=0.999), unit="layer"), SETTINGS)
    assert not fb.initial.gates_passed and fb.passed
    assert [(s.unit.name, s.accepted) for s in fb.steps] == [(conv2.name, True)]


# --- (b) step-back ------------------------------------------------------------------------------


class _Sabotaged:
    """A real ONNX Runtime runner whose logits are scrambled on the gate split's samples (never on the ranking
    split's) whenever the model keeps CONV2 in FP: the best-ranked step is then made to hurt the gate."""

    def __init__(self, runner: OnnxRuntimeRunner, gate_rows: set[bytes], trap: bool) -> None:
        self.runner, self.gate_rows, self.trap, self.name = runner, gate_rows, trap, runner.name

    def infer(self, x: np.ndarray) -> np.ndarray:
        y = self.runner.infer(x)
        if self.trap:
            hit = np.array([row.tobytes() in self.gate_rows for row in np.asarray(x, np.float32)])
            y[hit] = y[hit][:, ::-1] * 3.0
        return y


def test_b_a_step_that_hurts_the_gate_is_undone_and_the_next_candidate_tried(tiny_onnx, data):
    plan, ranges, int8 = _broken(tiny_onnx, data)
    inputs, ref = _search_inputs(tiny_onnx, data)
    gate_rows = {data[i].tobytes() for i in split_validation(len(data), None, 0).gate}

    def factory(model: onnx.ModelProto) -> _Sabotaged:
        keeps_conv2 = not any(n.name == CONV2 and n.input[1].endswith("_dequantized") for n in model.graph.node)
        return _Sabotaged(OnnxRuntimeRunner(model, "onnxruntime-int8"), gate_rows, keeps_conv2)

    fb = auto_fallback(
        tiny_onnx,
        int8,
        plan,
        ranges,
        ref,
        inputs,
        FallbackSettings(2, Gates(min_cosine=0.999), unit="layer", step_backs=1),
        SETTINGS,
        runner_factory=factory,
    )
    first, second = fb.steps[0], fb.steps[1]
    assert first.unit.name == CONV2 and first.rank == 1 and not first.accepted  # ranked best, made the gate worse
    assert first.after.shortfall > fb.initial.shortfall
    assert second.unit.name != CONV2 and second.rank == 1  # the next-ranked candidate, on the same model
    assert keep_fp_pattern(CONV2) not in fb.kept and CONV2 not in fb.plan.kept_fp
    assert len(fb.steps) <= 2 * (1 + 1)  # bounded: two accepted units at most, one step-back each
    assert not first.pareto  # dominated: worse accuracy and more FP than the start
    # report.json's fallback reads back typed (Report.from_dict), step-backs included; the block picture's
    # "auto-fallback" reasons (write.fallback_layers) come from the accepted steps only
    record = fb.record()
    again = from_mapping(FallbackRecord, json.loads(json.dumps(record.to_dict())), "report.json fallback")
    assert again == record and again.to_dict() == record.to_dict()
    assert [s.unit.name for s in again.steps if not s.accepted] == [CONV2]
    assert CONV2 not in [n for s in again.accepted for n in s.unit.nodes]


def test_b_too_many_step_backs_in_a_row_stop_the_search(tiny_onnx, data):
    plan, ranges, int8 = _broken(tiny_onnx, data)
    inputs, ref = _search_inputs(tiny_onnx, data)
    gate_rows = {data[i].tobytes() for i in split_validation(len(data), None, 0).gate}

    def factory(model: onnx.ModelProto) -> _Sabotaged:  # every reverted model hurts the gate
        quantized = sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1].endswith("_dequantized"))
        return _Sabotaged(OnnxRuntimeRunner(model, "onnxruntime-int8"), gate_rows, quantized < 7)  # the start quantizes all 7

    fb = auto_fallback(
        tiny_onnx,
        int8,
        plan,
        ranges,
        ref,
        inputs,
        FallbackSettings(3, Gates(min_cosine=0.999), unit="layer", step_backs=1),
        SETTINGS,
        runner_factory=factory,
    )
    assert [s.accepted for s in fb.steps] == [False, False] and fb.kept == [] and not fb.passed
    assert fb.stopped == "2 step(s) in a row made the gates worse on the gate split"
    assert fb.model is int8


# --- re-ranking only when needed ----------------------------------------------------------------


def test_stale_scores_are_remeasured_only_while_they_could_still_win():
    units = [Unit("layer", n, (n,), ("Conv",)) for n in "abcd"]
    gains = {
        units[0]: RankScore(0.1, 0, 1.0, 0),  # stale (measured before the accepted step)
        units[1]: RankScore(0.1, 0, 0.58, 0),  # stale
        units[2]: RankScore(0.1, 0, 0.1, 0),  # stale, far below: never re-measured
        units[3]: RankScore(0.1, 0, 0.6, 1),  # fresh
    }
    rescored: list[str] = []
    fresh_gain = {"a": 0.3, "b": 0.55}

    def rescore(u: Unit, base: int) -> RankScore:
        rescored.append(u.name)
        return RankScore(0.1, 0, fresh_gain[u.name], base)

    choice, rank = _pick(list(units), gains, 1, rescore, lambda u: 1 if u.name == "b" else 2)
    assert rescored == ["a", "b"]  # a (stale 1.0) fell to 0.3; b (stale 0.58 >= 0.9 x 0.6) re-measured; c never
    assert 0.55 >= NEAR_BEST * 0.6 and choice is not None and choice.name == "b" and rank == 2  # the cheaper of the near-best


def test_the_search_refuses_what_it_cannot_do(tiny_onnx, data):
    plan, ranges, int8 = _broken(tiny_onnx, data)
    inputs, ref = _search_inputs(tiny_onnx, data)
    with pytest.raises(UsageError, match="accuracy gate"):
        auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(2, Gates(max_p99_ms=5)), SETTINGS)
    with pytest.raises(UsageError, match="labelled"):
        auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(2, Gates(max_top1_drop=1)), SETTINGS)
    with pytest.raises(UsageError, match="unknown fallback unit"):
        auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(2, Gates(min_cosine=0.9), unit="row"), SETTINGS)


def test_onnxruntime_search_never_keeps_a_layer_twice_and_reaches_the_shared_qdq(tiny_onnx, data):
    """Under ``onnxruntime`` a kept CONV2 still reads BROKEN through conv1's closing Q/DQ (R8, O6), so keeping CONV2
    alone cannot fix it. The search must then keep another layer — never CONV2 again — until BROKEN's Q/DQ is gone."""
    plan = plan_qdq(tiny_onnx, Policy.ONNXRUNTIME)
    ranges = compute_ranges(collect_stats(tiny_onnx, plan.calibrated_tensors, [data]), "max")
    r = ranges[BROKEN]
    ranges[BROKEN] = replace(r, amax=r.amax * 100, max=r.max * 100)  # UINT8 asymmetric reads min/max
    int8 = insert_qdq(tiny_onnx, plan, ranges)
    assert BROKEN in {a.tensor for a in plan.activations}
    inputs, ref = _search_inputs(tiny_onnx, data)
    fb = auto_fallback(tiny_onnx, int8, plan, ranges, ref, inputs, FallbackSettings(4, Gates(min_cosine=0.999), unit="layer"), SETTINGS)
    names = [s.unit.name for s in fb.steps]
    assert len(names) == len(set(names)) and len(fb.kept) == len(set(fb.kept))
    assert fb.passed and BROKEN not in {a.tensor for a in fb.plan.activations}
    assert {CONV1, CONV2} <= set(fb.plan.kept_fp)
