"""Auto-fallback: keep the fewest units in FP, ranked on the model that runs, until the accuracy gates pass.

The algorithm and its report are written down in docs/fallback.md. In short:

1. **Split** the validation data once, seeded and stratified by label: the *ranking split*
   (``min(half, 1000)`` samples) ranks candidates, the *gate split* (the rest) judges every step and
   gives the build's verdict. Of the ranking split, the ``rank_samples`` (300) samples where INT8 and
   FP32 logits differ most are the *ranking subset* (NNCF's choice).
2. **Units**: a single weighted layer, or a whole residual block (its main-branch weighted layers and
   its Add), chosen by ``unit`` (``layer``, ``block``, ``auto``: a layer whose revert would break a
   residual fusion of the plan is offered only as its whole block). Every candidate is re-planned by
   the policy itself (``plan_qdq(keep_fp=...)``), so it is a legal placement; each step records the
   fusions it gives up (the plan's ``residual_adds[].fused`` before and after).
3. **Ranking on what runs**: each candidate is reverted alone, its model built by ``runner_factory``
   (default: :class:`rescompile.runtime.runners.OnnxRuntimeRunner`, ONNX Runtime with all graph
   optimizations, as the build validates), run on the ranking subset, and scored by the NMSE of its
   logits against FP32. Scores are cached by kept set; after an accepted step only candidates that
   could still be (nearly) the best are re-scored on the new model (lazy greedy: a score measured on
   an earlier model is treated as an upper bound of the gain).
4. **Greedy with step-back**: the best candidate (the cheapest in FP MACs among those within
   ``NEAR_BEST`` of the best gain) is tried on the gate split; a step that makes the gate shortfall
   worse is undone and the next candidate tried, at most ``step_backs`` times per step.
5. **Pareto table**: every model measured (the start, each accepted and each undone step) with its
   gate-split accuracy, share of MACs in FP and latency; ``pareto`` marks the points no other beats on
   both error and FP MAC share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.graph.index import node_name
from rescompile.graph.ops import WEIGHTED_OPS
from rescompile.pipeline.settings import FallbackSettings
from rescompile.validate.gates import GateResult, accuracy_gates, evaluate_gates
from rescompile.validate.latency import MIN_RUNS, measure_latency
from rescompile.validate.metrics import compare_outputs
from rescompile.validate.reference import ReferenceOutputs, ValidationInputs
from rescompile.validate.results import (
    FallbackRanking,
    FallbackRecord,
    FallbackSplit,
    FallbackStart,
    FallbackState,
    FallbackStep,
    FallbackUnit,
    RankScore,
)
from rescompile.validate.run import Measurement, ValidateSettings, run_outputs

__all__ = [
    "Fallback",
    "FallbackState",
    "FallbackStep",
    "Unit",
    "auto_fallback",
    "ort_runner_factory",
    "split_validation",
    "tensorrt_runner_factory",
    "weighted_macs",
]

if TYPE_CHECKING:
    from rescompile.calibrate.ranges import TensorRange
    from rescompile.quantize.policy import QuantPlan
    from rescompile.runtime.runners import Runner

RANKING_SHARE = 0.5  # of the validation samples, for ranking ...
RANKING_MAX = 1000  # ... at most this many; the gate split gets the rest
NEAR_BEST = 0.9  # a candidate within this share of the best gain competes on cost (FP MACs)
COSINE_POINTS = 100.0  # a cosine shortfall counts x100, like the points of the top-1 gates

RunnerFactory = Callable[[onnx.ModelProto], "Runner"]


def ort_runner_factory(threads: int | None = None) -> RunnerFactory:
    """Candidates on ONNX Runtime's CPU provider with all graph optimizations, as the build validates them."""

    def make(model: onnx.ModelProto) -> Runner:
        from rescompile.runtime.runners import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, "onnxruntime-int8", threads)

    return make


def tensorrt_runner_factory(workdir: Any, target: str = "gpu", batches: tuple[int, ...] = (1, 32)) -> RunnerFactory:
    """Candidates built into TensorRT engines for ``target`` under ``workdir`` and run there: rank and judge on the engine.

    Each call builds one engine (seconds to minutes each: a search on the engine is slow, and needs a GPU).
    """
    from pathlib import Path

    root = Path(workdir)
    count = [0]

    def make(model: onnx.ModelProto) -> Runner:
        from rescompile.buildfolder import INT8_ONNX
        from rescompile.engine.settings import EngineOptions
        from rescompile.engine.targets import get_target
        from rescompile.engine.tensorrt import build_engine
        from rescompile.io import save_onnx
        from rescompile.runtime.tensorrt_runner import TensorRTRunner

        count[0] += 1
        folder = root / f"candidate{count[0]:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_onnx(folder / INT8_ONNX, model)
        built = build_engine(
            folder / INT8_ONNX, get_target(target), EngineOptions(batches=batches), folder, timing_cache_dir=root / "timing-cache"
        )
        return TensorRTRunner(built.plan)

    return make


# --- the split ---------------------------------------------------------------------------------


@dataclass
class Split:
    """Which validation samples rank candidates and which judge the gates (indices into the validation set)."""

    seed: int
    stratified: bool
    ranking: np.ndarray
    gate: np.ndarray
    subset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # of ``ranking``: where INT8 differs most

    def record(self) -> FallbackSplit:
        return FallbackSplit(
            self.seed,
            self.stratified,
            int(len(self.ranking) + len(self.gate)),
            int(len(self.ranking)),
            int(len(self.gate)),
            int(len(self.subset)),
            [int(i) for i in self.ranking],
            [int(i) for i in self.subset],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.record())


def split_validation(count: int, labels: np.ndarray | None, seed: int, *, share: float = RANKING_SHARE, most: int = RANKING_MAX) -> Split:
    """The ranking/gate split of ``count`` validation samples: ``min(floor(count * share), most)`` for ranking.

    Seeded (the same seed gives the same split) and, with labels, stratified: each class gives the ranking
    split its share of samples (largest remainder), so both splits see every class in proportion.

    Raises:
        UsageError: fewer than 2 samples (no sample would be left for one of the splits).
    """
    if count < 2:
        raise UsageError(f"--auto-fallback needs at least 2 validation samples (one to rank, one to judge), got {count}")
    n_rank = max(1, min(int(count * share), most))
    rng = np.random.default_rng(seed)
    if labels is None or len(labels) != count:
        ranking = np.sort(rng.permutation(count)[:n_rank])
        stratified = False
    else:
        classes, counts = np.unique(labels, return_counts=True)
        exact = n_rank * counts / count
        quota = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - quota), kind="stable")[: n_rank - int(quota.sum())]:
            quota[i] += 1
        picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
        ranking = np.sort(np.concatenate(picked)).astype(np.int64)
        stratified = True
    gate = np.setdiff1d(np.arange(count), ranking)
    return Split(seed, stratified, ranking.astype(np.int64), gate.astype(np.int64))


# --- units -------------------------------------------------------------------------------------


Unit = FallbackUnit  # what one step keeps in FP (the typed record is the search's own unit)


def block_units(fp32: onnx.ModelProto, plan: QuantPlan) -> list[Unit]:
    """One unit per residual block with something still quantized: its main-branch weighted layers and its Add."""
    from rescompile.graph.topology import find_residual_blocks

    ops = {node_name(n): n.op_type for n in fp32.graph.node}
    kept = set(plan.kept_fp)
    out = []
    for b in find_residual_blocks(fp32):
        nodes = tuple(n for n in b.main_nodes if ops.get(n) in WEIGHTED_OPS) + (b.add,)
        if all(n in kept for n in nodes):
            continue
        out.append(Unit("block", b.add, tuple(n for n in nodes if n not in kept), tuple(ops[n] for n in nodes if n not in kept)))
    return out


def layer_units(plan: QuantPlan) -> list[Unit]:
    """One unit per weighted layer the plan quantizes."""
    return [Unit("layer", w.node, (w.node,), (w.op,)) for w in plan.weights]


def fusions_lost(before: QuantPlan, after: QuantPlan) -> list[tuple[str, str]]:
    """``(add, kernel)`` of every residual Add fused in ``before`` and not in ``after``: the fusions a step gives up."""
    now = {b.add: b.fused for b in after.residual_adds}
    return [(b.add, b.kernel) for b in before.residual_adds if b.fused and not now.get(b.add, False)]


def describe_fusion(unit: Unit, lost: Sequence[tuple[str, str]]) -> str:
    """What fusion a unit gives up, in words (the step's ``fusion``)."""

    def kernel_name(kernel: str) -> str:
        return kernel.replace(" fused INT8 kernel", "").replace(" (ReLU folded into its Q)", "")

    if unit.kind == "block":
        others = [(a, k) for a, k in lost if a != unit.name]
        text = f"block {unit.name} kept in FP whole: no INT8 fusion of it remains to lose"
        return text + "".join(f"; {kernel_name(k)} fusion of block {a} lost" for a, k in others)
    head = f"{unit.ops[0]} {unit.name} leaves INT8"
    if not lost:
        return f"{head}: no residual fusion lost"
    return head + ": " + "; ".join(f"{kernel_name(k)} fusion of block {a} lost" for a, k in lost)


def weighted_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per sample of each Conv/Gemm/MatMul, from inferred shapes."""
    from rescompile.graph.index import GraphIndex

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    idx = GraphIndex.build(model.graph)
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2:
            continue
        w = idx.constant_value(n.input[1])
        y = shapes.get(n.output[0])
        if w is None or not y:
            continue
        if n.op_type == "Conv":
            per_output = int(np.prod(w.shape[1:]))  # Cin/groups * kh * kw
            out[node_name(n)] = int(np.prod(y[1:])) * per_output
        else:
            out[node_name(n)] = int(np.prod(w.shape))
    return out


# --- records -----------------------------------------------------------------------------------


def pareto_axis(gates: Gates, labels: bool) -> str:
    """The metric of the first accuracy gate given (top-1 drop, agreement, cosine): what the Pareto table trades."""
    if gates.max_top1_drop is not None and labels:
        return "accuracy.top1_drop"
    if gates.min_agreement is not None or gates.min_cosine is None:
        return "agreement.top1"
    return "agreement.cosine_mean"


@dataclass
class Fallback:
    model: onnx.ModelProto
    plan: QuantPlan
    limit: int
    unit: str
    initial: FallbackState
    split: Split
    runner: str
    steps: list[FallbackStep] = field(default_factory=list)
    passed: bool = False
    stopped: str = ""
    initial_pareto: bool = False
    candidates: int = 0
    ranking_runs: int = 0
    gate_runs: int = 0
    seconds: float = 0.0
    ranking_nmse: float = 0.0  # NMSE of the starting model on the ranking subset
    pareto_axis: str = "agreement.top1"

    @property
    def accepted(self) -> list[FallbackStep]:
        return [s for s in self.steps if s.accepted]

    @property
    def kept(self) -> list[str]:
        return [p for s in self.accepted for p in s.keep_fp]

    @property
    def final(self) -> FallbackState:
        acc = self.accepted
        return acc[-1].after if acc else self.initial

    def mark_pareto(self, axis: str) -> None:
        """Mark the points no other measured point beats on both error (``axis``, lower) and FP MAC share (lower)."""
        self.pareto_axis = axis
        points = [(p.error(axis), p.fp_macs_share) for p in [self.initial] + [s.after for s in self.steps]]
        on = []
        for e, f in points:
            beaten = any(e2 <= e and f2 <= f and (e2 < e or f2 < f) for e2, f2 in points)
            on.append(not beaten)
        self.initial_pareto = on[0]
        for s, flag in zip(self.steps, on[1:], strict=True):
            s.pareto = flag

    def note(self) -> str:
        """The report's note on where its accuracy was measured."""
        return self.record().note()

    def record(self) -> FallbackRecord:
        """What the report keeps of it (everything but the model and the plan): report.json's ``fallback``."""
        return FallbackRecord(
            self.limit,
            self.unit,
            self.passed,
            self.stopped,
            self.kept,
            "gate split",
            self.split.record(),
            FallbackRanking(self.runner, "nmse", int(len(self.split.subset)), self.ranking_nmse, self.candidates, self.ranking_runs),
            self.gate_runs,
            self.pareto_axis,
            round(self.seconds, 3),
            FallbackStart(**asdict(self.initial), pareto=self.initial_pareto),
            list(self.steps),
        )

    def to_dict(self) -> dict[str, Any]:
        return self.record().to_dict()


# --- measuring ---------------------------------------------------------------------------------


def shortfall(results: Sequence[GateResult]) -> float:
    """How far the failing gates are from their thresholds (points; a cosine counts x100); 0 when all pass."""
    total = 0.0
    for g in results:
        if g.passed:
            continue
        if g.value is None:  # cannot happen from auto_fallback: a top-1 gate without labels is refused first
            continue
        gap = g.value - g.threshold if g.comparison == "<=" else g.threshold - g.value
        total += max(gap, 0.0) * (COSINE_POINTS if g.name == "min-cosine" else 1.0)
    return total


def nmse_per_sample(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref = reference.astype(np.float64)
    err = ((candidate.astype(np.float64) - ref) ** 2).sum(1)
    return np.asarray(err / np.maximum((ref * ref).sum(1), 1e-30))


class _Search:
    """The models one search builds and measures, with its caches."""

    def __init__(
        self,
        fp32: onnx.ModelProto,
        plan: QuantPlan,
        ranges: dict[str, TensorRange],
        fallback: FallbackSettings,
        settings: ValidateSettings,
        factory: RunnerFactory,
        gates: Gates,
    ) -> None:
        self.fp32, self.base_plan, self.ranges, self.fallback = fp32, plan, ranges, fallback
        self.settings, self.factory, self.gates = settings, factory, gates
        self.macs = weighted_macs(fp32)
        self.total_macs = max(sum(self.macs.values()), 1)
        self.plans: dict[tuple[str, ...], QuantPlan] = {}
        self.scores: dict[tuple[str, ...], tuple[float, int]] = {}  # kept patterns -> ranking-subset NMSE, flips
        self.ranking_runs = self.gate_runs = 0
        lat = settings.latency
        self.lat_batch = min(lat.batches)
        self.lat_runs = lat.runs or MIN_RUNS  # a cost estimate per step, not a benchmark
        self.lat_warmup = lat.warmup if lat.runs else min(lat.warmup, 1)

    def plan(self, kept: tuple[str, ...]) -> QuantPlan:
        from rescompile.quantize import plan_qdq

        if kept not in self.plans:
            keep = tuple(self.fallback.keep_fp) + kept
            self.plans[kept] = plan_qdq(self.fp32, self.base_plan.policy, keep_fp=keep, keep_first_last=self.fallback.keep_first_last)
        return self.plans[kept]

    def model(self, kept: tuple[str, ...]) -> onnx.ModelProto:
        from rescompile.quantize import insert_qdq

        return insert_qdq(self.fp32, self.plan(kept), self.ranges)

    def fp_share(self, plan: QuantPlan) -> float:
        quantized = {w.node for w in plan.weights}
        return sum(v for k, v in self.macs.items() if k not in quantized) / self.total_macs

    def unit_macs(self, unit: Unit) -> int:
        return sum(self.macs.get(n, 0) for n in unit.nodes)

    def rank_score(self, kept: tuple[str, ...], subset: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
        if kept not in self.scores:
            runner = self.factory(self.model(kept))
            bs = max(1, self.settings.batch_size)
            out = np.concatenate([runner.infer(subset[s : s + bs]) for s in range(0, len(subset), bs)])
            self.ranking_runs += 1
            self.scores[kept] = (float(nmse_per_sample(ref, out).mean()), int((out.argmax(1) != ref.argmax(1)).sum()))
        return self.scores[kept]

    def state(self, runner: Runner, plan: QuantPlan, ref: ReferenceOutputs, inputs: ValidationInputs) -> FallbackState:
        metrics = compare_outputs(ref.logits, run_outputs(runner, inputs, self.settings, "auto-fallback (gate split)"), ref.labels)
        self.gate_runs += 1
        lat = measure_latency(
            runner,
            inputs.head(self.lat_batch),
            self.lat_batch,
            warmup=self.lat_warmup,
            runs=self.lat_runs,
            budget_s=self.settings.latency.budget_s,
        )
        measured = Measurement(
            source=inputs.name,
            samples=len(ref.logits),
            reference=ref.runner,
            candidate=runner.name,
            baseline=None,
            accuracy=metrics.accuracy,
            agreement=metrics.agreement,
            per_class=metrics.per_class,
            latency=[lat],
        )
        results = evaluate_gates(measured, self.gates)
        acc, agr = metrics.accuracy, metrics.agreement
        return FallbackState(
            acc.candidate.top1,
            acc.top1_drop,
            agr.top1,
            agr.cosine_mean,
            all(g.passed for g in results),
            [g.line() for g in results if not g.passed],
            shortfall(results),
            self.fp_share(plan),
            lat.p50_ms,
        )


def candidate_units(search: _Search, mode: str) -> list[Unit]:
    """The units the search may keep in FP, by ``mode`` (docs/fallback.md#units)."""
    base = search.plan(())
    layers = layer_units(base)
    if mode == "layer":
        return layers
    blocks = block_units(search.fp32, base)
    in_blocks = {n for u in blocks for n in u.nodes}
    if mode == "block":
        return [u for u in layers if u.name not in in_blocks] + blocks
    keep = [u for u in layers if not fusions_lost(base, search.plan(u.patterns))]
    return keep + blocks


def auto_fallback(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    plan: QuantPlan,
    ranges: dict[str, TensorRange],
    reference: ReferenceOutputs,
    inputs: ValidationInputs,
    fallback: FallbackSettings,
    settings: ValidateSettings | None = None,
    *,
    runner_factory: RunnerFactory | None = None,
) -> Fallback:
    """Keep units in FP, best first on the ranking subset, until the accuracy gates pass on the gate split.

    Args:
        fp32: the FP32 simplified model the candidate was made from.
        int8, plan, ranges: the candidate, its plan (its policy is kept) and the calibrated ranges (reused as is).
        reference: FP32 logits and labels for ``inputs`` (the whole validation set; the search splits it).
        fallback: at most ``limit`` units kept; the gates (only the accuracy ones are tried); the unit kind;
            the ranking subset size; step-backs per step; the split's seed; the user's ``keep_fp``.
        settings: ValidateSettings (batch size, progress, threads, latency runs).
        runner_factory: builds the runner a candidate is ranked and judged on (default: ONNX Runtime with all
            graph optimizations, :func:`ort_runner_factory`); a TensorRT factory ranks on the engine.

    Raises:
        UsageError: no accuracy gate is set, the limit is < 1, an unknown unit kind, too few samples.
    """
    t0 = time.perf_counter()
    settings = settings or ValidateSettings()
    fallback.check()  # the checks build makes before any work (pipeline.settings), for a direct call
    gates, limit = accuracy_gates(fallback.gates), fallback.limit
    if gates.max_top1_drop is not None and reference.labels is None:
        raise UsageError("--max-top1-drop needs labelled validation data", hint="use --min-agreement or --min-cosine without labels")
    factory = runner_factory or ort_runner_factory(settings.threads)
    search = _Search(fp32, plan, ranges, fallback, settings, factory, gates)
    search.plans[()] = plan

    split = split_validation(inputs.count, reference.labels, fallback.seed)
    gate = _GateSplit(inputs.select(split.gate, f"{inputs.name} (gate split)"), reference.select(split.gate))
    start_runner, ranking = _ranking_subset(search, int8, inputs, reference, split)

    current = search.state(start_runner, plan, gate.ref, gate.inputs)
    result = Fallback(int8, plan, limit, fallback.unit, current, split, start_runner.name)
    result.ranking_nmse = ranking.start_nmse
    units = candidate_units(search, fallback.unit)
    result.candidates = len(units)
    walk = _Walk(current, list(units))
    while not walk.current.gates_passed:
        if walk.accepted >= limit:
            result.stopped = f"limit of {limit} fallback unit(s) reached"
            break
        if not walk.remaining:
            result.stopped = "no candidate unit left to keep in FP"
            break
        _take_step(search, walk, result, gate, ranking)
        if result.stopped:
            break
    else:
        result.stopped = "accuracy gates pass on the gate split" if result.steps else "accuracy gates already pass on the gate split"
    result.passed = walk.current.gates_passed
    result.ranking_runs, result.gate_runs = search.ranking_runs, search.gate_runs
    result.mark_pareto(pareto_axis(gates, reference.labels is not None))
    result.seconds = time.perf_counter() - t0
    return result


@dataclass(frozen=True)
class _GateSplit:
    """The gate split: the FP32 outputs and the inputs every tried model is judged on."""

    inputs: ValidationInputs
    ref: ReferenceOutputs


@dataclass(frozen=True)
class _RankingSubset:
    """The ranking subset: the inputs where the starting INT8 model differs most from FP32, and their FP32 logits."""

    inputs: np.ndarray
    ref: np.ndarray
    start_nmse: float  # the starting model's NMSE on it


def _ranking_subset(
    search: _Search, int8: onnx.ModelProto, inputs: ValidationInputs, reference: ReferenceOutputs, split: Split
) -> tuple[Runner, _RankingSubset]:
    """Run the starting model on the ranking split and keep its ``rank_samples`` worst samples (by NMSE) as the
    ranking subset (recorded in ``split.subset``); the starting runner and the subset. Scores the starting model."""
    ranking_inputs = inputs.select(split.ranking)
    rank_ref = reference.select(split.ranking)
    start_runner = search.factory(int8)
    start_out = run_outputs(start_runner, ranking_inputs, search.settings, "auto-fallback (ranking split)")
    search.ranking_runs += 1
    order = np.argsort(-nmse_per_sample(rank_ref.logits, start_out), kind="stable")[: max(1, search.fallback.rank_samples)]
    pos = np.sort(order)
    split.subset = split.ranking[pos]
    subset = ranking_inputs.select(pos).head(len(pos))
    subset_ref = rank_ref.logits[pos]
    start_nmse = float(nmse_per_sample(subset_ref, start_out[pos]).mean())
    search.scores[()] = (start_nmse, int((start_out[pos].argmax(1) != subset_ref.argmax(1)).sum()))
    return start_runner, _RankingSubset(subset, subset_ref, start_nmse)


@dataclass
class _Walk:
    """Where the search stands: the gate state, the units left, what is kept in FP so far and the cached gains."""

    current: FallbackState
    remaining: list[Unit]
    kept: tuple[str, ...] = ()
    kept_nodes: set[str] = field(default_factory=set)
    accepted: int = 0
    gains: dict[Unit, RankScore] = field(default_factory=dict)

    def accept(self, search: _Search, choice: Unit, trial: tuple[str, ...], after: FallbackState) -> None:
        """Keep ``choice`` (the kept patterns become ``trial``); drop the units it covers and the gains it may have raised."""
        previous = self.kept
        self.kept, self.current, self.accepted = trial, after, self.accepted + 1
        self.kept_nodes |= set(choice.nodes)
        self.remaining = [u for u in self.remaining if not set(u.nodes) <= self.kept_nodes]
        for u in self.remaining:  # a unit that now frees more Q/DQ has no upper bound in its old gain
            if u in self.gains and freed(search, self.kept, u) - freed(search, previous, u):
                del self.gains[u]


def _take_step(search: _Search, walk: _Walk, result: Fallback, gate: _GateSplit, ranking: _RankingSubset) -> None:
    """One step of the search: try units best first until one does not make the gate shortfall worse (kept),
    or set ``result.stopped`` (no unit lowers the ranking error, or too many step-backs in a row)."""

    def score(u: Unit, accepted: int) -> RankScore:
        nmse, flips = search.rank_score(merged(walk.kept, u), ranking.inputs, ranking.ref)
        return RankScore(nmse, flips, search.scores[walk.kept][0] - nmse, accepted)

    step_backs = 0
    while True:
        choice, rank = _pick(walk.remaining, walk.gains, walk.accepted, score, search.unit_macs)
        if choice is None:
            result.stopped = "no candidate lowers the error on the ranking subset"
            return
        walk.remaining.remove(choice)
        trial = merged(walk.kept, choice)
        model, new_plan = search.model(trial), search.plan(trial)
        after = search.state(search.factory(model), new_plan, gate.ref, gate.inputs)
        lost = fusions_lost(search.plan(walk.kept), new_plan)
        ok = after.shortfall <= walk.current.shortfall
        result.steps.append(_step_record(choice, lost, rank, walk.gains[choice], ok, after, walk.current))
        if ok:
            walk.accept(search, choice, trial, after)
            result.model, result.plan = model, new_plan
            return
        step_backs += 1
        if step_backs > search.fallback.step_backs or not walk.remaining:
            result.stopped = f"{step_backs} step(s) in a row made the gates worse on the gate split"
            return


def _step_record(
    choice: Unit, lost: list[tuple[str, str]], rank: int, score: RankScore, ok: bool, after: FallbackState, current: FallbackState
) -> FallbackStep:
    """The report's record of one tried unit: what it gave up, its ranking score, the gate verdict and what it bought."""
    return FallbackStep(
        choice,
        list(choice.patterns),
        describe_fusion(choice, lost),
        [a for a, _ in lost],
        rank,
        score,
        ok,
        after,
        after.agreement - current.agreement,
        None if after.top1 is None or current.top1 is None else after.top1 - current.top1,
        after.p50_ms - current.p50_ms,
        after.fp_macs_share - current.fp_macs_share,
    )


def freed(search: _Search, kept: tuple[str, ...], unit: Unit) -> set[str]:
    """The activation tensors whose Q/DQ goes away when ``unit`` is kept in FP on top of ``kept``.

    Under the ``onnxruntime`` policy a kept layer still reads an INT8 kernel's output through its shared
    Q/DQ (R8, O6): keeping it frees that tensor only once its producer is kept too. So a unit's gain can
    grow when a neighbour is kept; the search re-measures exactly the units whose freed set grew.
    """
    quantized = {a.tensor for a in search.plan(kept).activations}
    return quantized - {a.tensor for a in search.plan(merged(kept, unit)).activations}


def merged(kept: tuple[str, ...], unit: Unit) -> tuple[str, ...]:
    """The kept patterns with ``unit``'s added: sorted, no repeats (the key of the plan and score caches)."""
    return tuple(sorted(set(kept) | set(unit.patterns)))


def _pick(
    remaining: list[Unit],
    gains: dict[Unit, RankScore],
    accepted: int,
    rescore: Callable[[Unit, int], RankScore],
    cost: Callable[[Unit], int],
) -> tuple[Unit | None, int]:
    """The next unit to try: lazy greedy over cached gains, then the cheapest of the near-best.

    A gain measured on an earlier model (``base < accepted``) is taken as an upper bound: it is re-measured
    only while it could still reach ``NEAR_BEST`` of the best fresh gain. Returns ``(None, 0)`` when no unit
    lowers the ranking-subset error.
    """
    for u in remaining:
        if u not in gains:
            gains[u] = rescore(u, accepted)
    while True:
        fresh = [u for u in remaining if gains[u].base == accepted]
        best = max((gains[u].gain for u in fresh), default=float("-inf"))
        stale = [u for u in remaining if gains[u].base < accepted and gains[u].gain >= NEAR_BEST * best]
        if not stale:
            break
        top = max(stale, key=lambda u: gains[u].gain)
        gains[top] = rescore(top, accepted)
    fresh = [u for u in remaining if gains[u].base == accepted]
    if not fresh:
        return None, 0
    best = max(gains[u].gain for u in fresh)
    if best <= 0:
        return None, 0
    ranked = sorted(fresh, key=lambda u: (-gains[u].gain, u.kind, u.name))
    near = [u for u in ranked if gains[u].gain >= NEAR_BEST * best]
    choice = min(near, key=lambda u: (cost(u), -gains[u].gain, u.name))
    return choice, ranked.index(choice) + 1
