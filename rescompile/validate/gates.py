"""Gates: thresholds over a measurement's typed results; each result names the metric, its value and the threshold.

The one gate path of ``build``, ``validate`` and ``deploy``: :func:`judge` evaluates the
thresholds (:func:`evaluate_gates`) on a report's :class:`~rescompile.validate.run.Measurement`,
adds the stages' own gates (the TensorRT engine's residual fusion, :func:`fusion_gate`), records
every result in the report and returns the :class:`Verdict`, whose :meth:`Verdict.failure` is the
GateFailed (exit 1) every command raises.

Every threshold gate is one row of :data:`SPECS`: its ``Gates`` field and flag, the comparison,
the valid range, the unit and how its value is read from the measurement's attributes. A new
gate is a new ``Gates`` field (``rescompile/config.py``), its option, and one row here; report.json,
JUnit, Markdown, HTML and the console show every GateResult without knowing its kind.

Thresholds come from flags or a YAML recipe (``--gates gates.yaml``); flags override the
recipe key by key. Nonsense thresholds are a UsageError (exit 2), a missed gate is a
GateFailed (exit 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rescompile.config import Gates
from rescompile.errors import GateFailed, UsageError

if TYPE_CHECKING:
    from rescompile.engine.dla import DlaReport
    from rescompile.engine.layerinfo import FusionReport
    from rescompile.engine.tensorrt import EngineBuild
    from rescompile.validate.run import Measurement

FUSION_GATE = "engine_residual_fusion"
DLA_GATE = "engine_dla"
UNFUSED_SHOWN = 5


@dataclass
class GateResult:
    name: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    message: str
    comparison: str = "<="  # value <= threshold passes, or ">="

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for a terminal or a CI log: ``FAIL max-top1-drop: accuracy.top1_drop = ...``."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.message}"


Reading = tuple[str, float | None, str]  # (metric name, value or None, why it is missing)


def _top1_drop(m: Measurement, batch: int | None) -> Reading:
    drop = m.accuracy.top1_drop
    return "accuracy.top1_drop", drop, "" if drop is not None else "n/a (no labels)"


def _candidate_p99(m: Measurement, batch: int | None) -> Reading:
    rec = m.candidate_latency(batch)
    metric = f"latency.candidate.batch{batch}.p99_ms"
    return (metric, None, f"n/a (batch {batch} not measured)") if rec is None else (metric, float(rec.p99_ms), "")


def _speedup(m: Measurement, batch: int | None) -> Reading:
    v = m.speedup.get(str(batch))
    metric = f"speedup.batch{batch}.p50"
    return (metric, None, f"n/a (no FP32 baseline measured at batch {batch})") if v is None else (metric, float(v), "")


@dataclass(frozen=True)
class GateSpec:
    """One threshold gate: the ``Gates`` field it reads, its flag, ``value <comparison> threshold`` passes,
    the valid threshold range, how the value is shown, and ``read``: (measurement, latency batch) -> reading."""

    field: str
    flag: str
    comparison: str
    lo: float
    hi: float
    unit: str
    fmt: str
    read: Callable[[Measurement, int | None], Reading]
    strict_lo: bool = False  # the threshold must be > lo (not >=)

    @property
    def name(self) -> str:
        return self.flag[2:]


SPECS = (
    GateSpec("max_top1_drop", "--max-top1-drop", "<=", 0.0, 100.0, " points", ".2f", _top1_drop),
    GateSpec("min_agreement", "--min-agreement", ">=", 0.0, 100.0, "%", ".2f", lambda m, b: ("agreement.top1", m.agreement.top1, "")),
    GateSpec("min_cosine", "--min-cosine", ">=", -1.0, 1.0, "", ".5f", lambda m, b: ("agreement.cosine_mean", m.agreement.cosine_mean, "")),
    GateSpec("max_p99_ms", "--max-p99-ms", "<=", 0.0, math.inf, " ms", ".3f", _candidate_p99, strict_lo=True),
    GateSpec("min_speedup", "--min-speedup", ">=", 0.0, math.inf, "x", ".3f", _speedup, strict_lo=True),
)
ACCURACY_GATES = ("max_top1_drop", "min_agreement", "min_cosine")
LABEL_GATES = ("max_top1_drop",)  # need labelled validation data (rescompile.data.holdout.check_label_gates)


def check_thresholds(gates: Gates) -> None:
    """Raise UsageError for thresholds that make no sense (NaN, out of range, not a number)."""
    from rescompile.readers import short

    for s in SPECS:
        value = getattr(gates, s.field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise UsageError(f"{s.flag} must be a number, got {short(value)}")
        if value < s.lo or value > s.hi or (s.strict_lo and value <= s.lo):
            bounds = f"> {s.lo:g}" if math.isinf(s.hi) else f"in [{s.lo:g}, {s.hi:g}]"
            raise UsageError(f"{s.flag} {value:g} is out of range: it must be {bounds}")
    if gates.latency_batch is not None and (
        isinstance(gates.latency_batch, bool) or not isinstance(gates.latency_batch, int) or gates.latency_batch < 1
    ):
        raise UsageError(f"the gates' latency batch must be a positive integer, got {short(gates.latency_batch)}")


def any_gate(gates: Gates) -> bool:
    return any(getattr(gates, s.field) is not None for s in SPECS)


def accuracy_gates(gates: Gates) -> Gates:
    """Only the gates that measure accuracy (what ``--auto-fallback`` tries to pass)."""
    return Gates(**{f: getattr(gates, f) for f in ACCURACY_GATES})


def load_gates(path: Path) -> Gates:
    """Read a YAML gates recipe: a mapping of gate names (``max-top1-drop`` or ``max_top1_drop``) to numbers.

    The mapping may sit at the top level or under a ``gates:`` key.

    Raises:
        UsageError: unreadable file, unknown key, or a value that is not a number.
    """
    from rescompile.readers import read_yaml, short

    path = Path(path)
    doc = read_yaml(path, "gates file")
    if isinstance(doc, dict) and isinstance(doc.get("gates"), dict):
        doc = doc["gates"]
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{path} holds no gates", hint="write e.g. 'max-top1-drop: 1.0' and 'min-agreement: 98'")
    known = {f.name for f in fields(Gates)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"{path}: unknown gate {short(key)}", hint="one of: " + ", ".join(k.replace("_", "-") for k in sorted(known)))
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{path}: gate {short(key)} must be a number, got {short(value)}")
        values[name] = value
    gates = Gates(**values)
    check_thresholds(gates)
    return gates


def merge_gates(recipe: Gates | None, flags: Gates) -> Gates:
    """``flags`` override ``recipe`` wherever a flag was given."""
    if recipe is None:
        return flags
    return replace(recipe, **{f.name: getattr(flags, f.name) for f in fields(Gates) if getattr(flags, f.name) is not None})


def resolve_gates(recipe: Path | None, flags: Gates) -> Gates:
    """Gates from an optional YAML recipe overridden by flags; UsageError (exit 2) for invalid thresholds."""
    gates = merge_gates(load_gates(recipe) if recipe is not None else None, flags)
    check_thresholds(gates)
    return gates


def gate_batch(measurement: Measurement, gates: Gates) -> int | None:
    """The batch size the latency gates read: the configured one, else the smallest measured."""
    if gates.latency_batch is not None:
        return gates.latency_batch
    batches = [r.batch for r in measurement.latency]
    return min(batches) if batches else None


def evaluate_gates(measurement: Measurement, gates: Gates) -> list[GateResult]:
    """Check ``measurement``'s typed results against ``gates``; one result per enabled gate, in :data:`SPECS` order."""
    check_thresholds(gates)
    batch = gate_batch(measurement, gates)
    out: list[GateResult] = []
    for s in SPECS:
        threshold = getattr(gates, s.field)
        if threshold is None:
            continue
        metric, value, missing = s.read(measurement, batch)
        if value is None:
            ok, shown = False, missing
        else:
            ok = value <= threshold if s.comparison == "<=" else value >= threshold
            shown = f"{value:{s.fmt}}{s.unit}"
        msg = f"{metric} = {shown}, threshold {s.comparison} {threshold:g}{s.unit}"
        out.append(GateResult(s.name, metric, value, float(threshold), ok, msg, s.comparison))
    return out


def fusion_gate(fusion: FusionReport) -> GateResult:
    """The TensorRT engine's fusion report as a gate: every residual Add fused into an INT8 layer (build and deploy)."""
    unfused = [a.add for a in fusion.adds if not a.ok]
    passed = fusion.ok
    message = (
        f"every residual Add ({len(fusion.adds)}) is fused into an INT8 TensorRT layer"
        if passed
        else f"{len(unfused)} residual Add(s) not fused into an INT8 TensorRT layer: {', '.join(unfused[:UNFUSED_SHOWN])}"
        + ("" if fusion.detailed else " (no detailed layer information)")
    )
    return GateResult(FUSION_GATE, "residual Adds not fused into INT8", float(len(unfused)), 0.0, passed, message)


def dla_gate(report: DlaReport, fusion: FusionReport) -> GateResult:
    """The DLA check as a gate named like the others: some layer ran on DLA, and no residual Add fell back to the GPU."""
    fallen = [a.add for a in fusion.adds if a.status == "gpu-fallback"]
    problems = []
    if not report.detailed:
        problems.append("no detailed layer information: cannot tell DLA from GPU layers")
    elif report.dla_layers == 0:
        problems.append(f"no layer runs on DLA ({report.gpu_layers} GPU layers): the whole engine fell back to the GPU")
    if fallen:
        problems.append(f"{len(fallen)} residual Add(s) fell back to the GPU: {', '.join(fallen[:UNFUSED_SHOWN])}")
    passed = not problems
    message = (
        f"{report.dla_layers} layer(s) on DLA, {report.gpu_layers} on the GPU; every residual Add on DLA"
        if passed
        else "; ".join(problems) + f" ({report.dla_layers} on DLA, {report.gpu_layers} on the GPU)"
    )
    return GateResult(DLA_GATE, "layers on DLA", float(report.dla_layers), 1.0, passed, message, comparison=">=")


def engine_gates(build: EngineBuild) -> list[GateResult]:
    """The engine's own gates: residual fusion, and for a ``--dla-core`` plan the DLA gate (:func:`dla_gate`).

    One list for ``build --backend tensorrt`` and ``deploy``, so both judge an engine the same way."""
    return [fusion_gate(build.fusion), *([dla_gate(build.dla, build.fusion)] if build.dla is not None else [])]


@dataclass
class Verdict:
    """Every gate's result; ``passed`` when all pass."""

    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failures(self) -> list[str]:
        """``FAIL <gate>: <metric> = <value>, threshold <op> <t>`` for each failed gate."""
        return [g.line() for g in self.gates if not g.passed]

    @property
    def failed_names(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    def failure(self, after: str = "", *, result: object = None, where: str = "") -> GateFailed | None:
        """The GateFailed (exit 1) naming every failed gate, carrying ``result`` (what the command made), with
        ``after`` appended; None when all pass. ``where`` follows "failed" (``" on this device"``)."""
        failures = self.failures
        if not failures:
            return None
        head = f"{len(failures)} of {len(self.gates)} gate(s) failed{where}:\n  "
        return GateFailed(head + "\n  ".join(failures) + after, result=result)


class Judged(Protocol):
    """A report a verdict is recorded in (``build``/``validate``'s Report, ``deploy``'s DeployReport)."""

    measurement: Measurement
    gates: list[GateResult]
    passed: bool | None


def judge(report: Judged, gates: Gates, extra: Sequence[GateResult] = ()) -> Verdict:
    """Evaluate ``gates`` on ``report``'s measurement, then the stages' ``extra`` gates; record them in ``report``.

    Raises:
        UsageError: nonsense thresholds (exit 2).
    """
    verdict = Verdict([*evaluate_gates(report.measurement, gates), *extra])
    report.gates, report.passed = list(verdict.gates), verdict.passed
    return verdict
