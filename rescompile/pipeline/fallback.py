"""Auto-fallback: keep the most damaging layers in higher precision, one at a time, until the accuracy gates pass.

Each step ranks the quantized layers with layerwise blame, adds the worst one to
``keep_fp``, re-plans with ``plan_qdq(model, policy, keep_fp=...)`` and re-inserts Q/DQ with
the same calibrated ranges, then re-measures accuracy on the full validation set. The
record of every step says which layer was kept, what accuracy it bought, and what it cost:
the share of multiply-accumulates now in FP and the measured latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rescompile.config import Gates
from rescompile.errors import UsageError
from rescompile.graph.index import node_name
from rescompile.graph.ops import WEIGHTED_OPS
from rescompile.pipeline.settings import FallbackSettings
from rescompile.validate.gates import accuracy_gates, any_gate, evaluate_gates
from rescompile.validate.latency import MIN_RUNS, measure_latency
from rescompile.validate.layerwise import layerwise_blame
from rescompile.validate.metrics import compare_outputs
from rescompile.validate.reference import ReferenceOutputs, ValidationInputs
from rescompile.validate.results import FallbackRecord, FallbackState, FallbackStep
from rescompile.validate.run import Measurement, ValidateSettings, run_outputs

__all__ = ["Fallback", "FallbackState", "FallbackStep", "auto_fallback", "weighted_macs"]

if TYPE_CHECKING:
    from rescompile.calibrate.ranges import TensorRange
    from rescompile.quantize.policy import QuantPlan


@dataclass
class Fallback:
    model: onnx.ModelProto
    plan: QuantPlan
    limit: int
    initial: FallbackState
    steps: list[FallbackStep] = field(default_factory=list)
    passed: bool = False
    stopped: str = ""  # why the search ended

    @property
    def kept(self) -> list[str]:
        return [s.keep_fp for s in self.steps]

    def record(self) -> FallbackRecord:
        """What the report keeps of it (everything but the model and the plan)."""
        return FallbackRecord(self.limit, self.passed, self.stopped, self.kept, self.initial, list(self.steps))

    def to_dict(self) -> dict[str, Any]:
        return self.record().to_dict()


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


class _Meter:
    """Measures a candidate for auto-fallback: accuracy on the full validation set against the accuracy gates,
    the share of MACs left in FP, and a short latency estimate at the smallest latency batch."""

    def __init__(
        self, fp32: onnx.ModelProto, reference: ReferenceOutputs, inputs: ValidationInputs, gates: Gates, settings: ValidateSettings
    ) -> None:
        self.reference, self.inputs, self.gates, self.settings = reference, inputs, gates, settings
        self.macs = weighted_macs(fp32)
        self.total_macs = max(sum(self.macs.values()), 1)
        lat = settings.latency
        self.batch = min(lat.batches)
        self.runs = lat.runs or MIN_RUNS  # default: a cost estimate per step, not a benchmark
        self.warmup = lat.warmup if lat.runs else min(lat.warmup, 1)

    def state(self, model: onnx.ModelProto, plan: QuantPlan) -> FallbackState:
        from rescompile.runtime.runners import OnnxRuntimeRunner

        ref, s = self.reference, self.settings
        runner = OnnxRuntimeRunner(model, "onnxruntime-int8", s.threads)
        metrics = compare_outputs(ref.logits, run_outputs(runner, self.inputs, s, "auto-fallback"), ref.labels)
        lat = measure_latency(
            runner, self.inputs.head(self.batch), self.batch, warmup=self.warmup, runs=self.runs, budget_s=s.latency.budget_s
        )
        measured = Measurement(
            source=self.inputs.name,
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
        quantized = {w.node for w in plan.weights}
        fp_share = sum(v for k, v in self.macs.items() if k not in quantized) / self.total_macs
        acc, agr = metrics.accuracy, metrics.agreement
        return FallbackState(
            acc.candidate.top1,
            acc.top1_drop,
            agr.top1,
            agr.cosine_mean,
            all(g.passed for g in results),
            [g.line() for g in results if not g.passed],
            fp_share,
            lat.p50_ms,
        )


def auto_fallback(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    plan: QuantPlan,
    ranges: dict[str, TensorRange],
    reference: ReferenceOutputs,
    inputs: ValidationInputs,
    fallback: FallbackSettings,
    settings: ValidateSettings | None = None,
) -> Fallback:
    """Keep layers in FP, worst first, until the accuracy gates pass or ``fallback.limit`` layers are kept.

    Args:
        fp32: the FP32 simplified model the candidate was made from.
        int8, plan, ranges: the candidate, its plan (its policy is kept) and the calibrated ranges (reused as is).
        reference: FP32 logits and labels for ``inputs``.
        fallback: the most layers to keep in FP; the gates (only the accuracy ones, top-1 drop, agreement,
            cosine, are tried); the user's own ``keep_fp`` and ``keep_first_last``.
        settings: ValidateSettings (batch size, progress, threads, latency runs).

    Raises:
        UsageError: no accuracy gate is set, or the limit is < 1.
    """
    from rescompile.quantize import insert_qdq, plan_qdq

    settings = settings or ValidateSettings()
    gates, limit = accuracy_gates(fallback.gates), fallback.limit
    if not any_gate(gates):
        raise UsageError("--auto-fallback needs an accuracy gate to aim for", hint="add --max-top1-drop, --min-agreement or --min-cosine")
    if limit < 1:
        raise UsageError(f"the auto-fallback limit must be >= 1, got {limit}")
    meter = _Meter(fp32, reference, inputs, gates, settings)
    sample = inputs.head(settings.layerwise_samples)
    current = meter.state(int8, plan)
    result = Fallback(int8, plan, limit, current)
    kept = list(fallback.keep_fp)
    while not current.gates_passed:
        if len(result.steps) >= limit:
            result.stopped = f"limit of {limit} fallback layer(s) reached"
            break
        blame = layerwise_blame(fp32, result.model, sample)
        if not blame.ranking:
            result.stopped = "no quantized layer left to keep in FP"
            break
        worst = blame.layer(blame.ranking[0])
        kept.append(worst.keep_fp)
        new_plan = plan_qdq(fp32, plan.policy, keep_fp=tuple(kept), keep_first_last=fallback.keep_first_last)
        model = insert_qdq(fp32, new_plan, ranges)
        after = meter.state(model, new_plan)
        gained_top1 = None if after.top1 is None or current.top1 is None else after.top1 - current.top1
        result.steps.append(
            FallbackStep(
                worst.node,
                worst.op,
                worst.keep_fp,
                worst.jump,
                after,
                after.agreement - current.agreement,
                gained_top1,
                after.p50_ms - current.p50_ms,
                after.fp_macs_share - current.fp_macs_share,
            )
        )
        result.model, result.plan, current = model, new_plan, after
    else:
        result.stopped = "accuracy gates pass" if result.steps else "accuracy gates already pass"
    result.passed = current.gates_passed
    return result
