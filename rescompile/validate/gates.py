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

Accuracy gates know their error bars (docs/statistics.md): each result records the metric's 95%
interval, where it lies (``side``: safe, unsafe or straddles) and, when it straddles, how many
samples would settle it. ``--gate-mode point`` (the default) passes on the point estimate,
``confident`` only when the whole interval is on the safe side. With no accuracy gate at all,
the default floor (:data:`FLOOR`, docs/gates.md) is checked and recorded as ``floor_*`` gates: it
fails only on evidence of broken INT8 (an interval wholly on the failing side), never on a straddle;
``--no-default-gates`` turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rescompile.config import Gates
from rescompile.errors import GateFailed, UsageError
from rescompile.validate import stats

if TYPE_CHECKING:
    from rescompile.data.holdout import DataChoice
    from rescompile.engine.dla import DlaReport
    from rescompile.engine.layerinfo import FusionReport
    from rescompile.engine.tensorrt import EngineBuild
    from rescompile.validate.run import Measurement

FUSION_GATE = "engine_residual_fusion"
DLA_GATE = "engine_dla"
UNFUSED_SHOWN = 5
MODES = stats.MODES  # --gate-mode: point | confident
FLOOR_MODE = "floor"  # how the default floor judges: fail only when the interval is wholly on the failing side
CLASSES_SHOWN = 5
FLOOR_HINT = (
    "INT8 looks broken on this model: try --auto-fallback N with an accuracy gate (e.g. --max-top1-drop 1) "
    "or --equalize; --no-default-gates turns the floor off"
)
# The floor's remedies, each with the option that asks for it: the hint names only those the build has not tried.
FLOOR_REMEDIES = (
    ("equalize", "--equalize"),
    ("auto_fallback", "--auto-fallback N with an accuracy gate (e.g. --max-top1-drop 1)"),
)


def floor_hint(tried: Collection[str] = ()) -> str:
    """The hint of a failed floor: the remedies in FLOOR_REMEDIES not in ``tried`` (``equalize``,
    ``auto_fallback``), then how to turn the floor off. With none left, it says so."""
    left = [text for name, text in FLOOR_REMEDIES if name not in tried]
    if len(left) == len(FLOOR_REMEDIES):
        return FLOOR_HINT
    if left:
        return f"INT8 looks broken on this model: try also {' and '.join(left)}; --no-default-gates turns the floor off"
    return (
        "INT8 looks broken on this model even with --equalize and the search: raise --auto-fallback, try "
        "--fallback-unit block or --calib-method, or keep it in FP; --no-default-gates turns the floor off"
    )


@dataclass
class GateResult:
    """One gate's outcome. ``lo``/``hi``: the metric's 95% interval (None for gates without one), ``side``: where
    it lies against the threshold (safe | unsafe | straddles), ``samples_to_settle``: when it straddles, the total
    samples at the observed rates after which it would not (None: never, or not straddling), ``mode``: how the
    gate was judged (point | confident | floor)."""

    name: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    message: str
    comparison: str = "<="  # value <= threshold passes, or ">="
    mode: str | None = None
    lo: float | None = None
    hi: float | None = None
    side: str | None = None
    samples_to_settle: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def abstained(self) -> bool:
        """A floor that had nothing to judge (no labels, no decisive sample): passed, with no value."""
        return self.passed and self.value is None

    def interval_text(self, fmt: str = ".4g") -> str:
        """``[lo, hi]`` or "" when the gate has no interval."""
        if self.lo is None or self.hi is None:
            return ""
        return f"[{self.lo:{fmt}}, {self.hi:{fmt}}]"

    def settle_text(self) -> str:
        """``straddles: ~N samples would settle it`` when the interval straddles the threshold, else ""."""
        if self.side != "straddles":
            return ""
        if self.samples_to_settle is None:
            return "straddles: no sample count settles it at the observed rates"
        return f"straddles: ~{self.samples_to_settle:,} samples would settle it"

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


def _worst_class(m: Measurement, batch: int | None) -> Reading:
    if not m.per_class or any(d.drop is None for d in m.per_class):
        return "per_class.drop", None, "n/a (no labels)" if not m.per_class else "n/a (no per-class intervals in this report)"
    worst = max(m.per_class, key=lambda d: d.drop.point if d.drop is not None else -math.inf)
    return f"per_class.drop (worst: {_class_name(m, worst.label)})", worst.drop.point if worst.drop is not None else None, ""


def _class_name(m: Measurement, label: int) -> str:
    names = m.class_names
    return f"class {label} {names[label]!r}" if 0 <= label < len(names) else f"class {label}"


Decider = Callable[["Measurement", float, str, str], "stats.Decision | None"]  # (measurement, threshold, comparison, mode)


def _estimate_decider(get: Callable[[Measurement], stats.Estimate | None]) -> Decider:
    def decide(m: Measurement, threshold: float, comparison: str, mode: str) -> stats.Decision | None:
        est = get(m)
        return None if est is None else stats.decide_estimate(est, threshold, comparison, mode)

    return decide


def class_drops(m: Measurement) -> stats.ClassDrops | None:
    """The per-class drops of ``m`` as :func:`stats.decide_classes` reads them (None without per-class intervals)."""
    rows = [stats.ClassDrop(d.label, d.drop, 1.0 if d.p_holm is None else d.p_holm) for d in m.per_class if d.drop is not None]
    if not rows or len(rows) != len(m.per_class):
        return None
    rows.sort(key=lambda r: (-r.estimate.point, r.label))
    return stats.ClassDrops(tuple(rows), stats.LEVEL, rows[0].estimate.level, rows[0].estimate.method)


def _decide_classes(m: Measurement, threshold: float, comparison: str, mode: str) -> stats.Decision | None:
    drops = class_drops(m)
    return None if drops is None else stats.decide_classes(drops, threshold, mode)


@dataclass(frozen=True)
class GateSpec:
    """One threshold gate: the ``Gates`` field it reads, its flag, ``value <comparison> threshold`` passes,
    the valid threshold range, how the value is shown, ``read``: (measurement, latency batch) -> reading, and
    ``decide``: the interval-aware decision (:mod:`rescompile.validate.stats`) for gates whose metric has one."""

    field: str
    flag: str
    comparison: str
    lo: float
    hi: float
    unit: str
    fmt: str
    read: Callable[[Measurement, int | None], Reading]
    strict_lo: bool = False  # the threshold must be > lo (not >=)
    decide: Decider | None = None

    @property
    def name(self) -> str:
        return self.flag[2:]


SPECS = (
    GateSpec(
        "max_top1_drop",
        "--max-top1-drop",
        "<=",
        0.0,
        100.0,
        " points",
        ".2f",
        _top1_drop,
        decide=_estimate_decider(lambda m: m.accuracy.top1_drop_interval),
    ),
    GateSpec(
        "min_agreement",
        "--min-agreement",
        ">=",
        0.0,
        100.0,
        "%",
        ".2f",
        lambda m, b: ("agreement.top1", m.agreement.top1, ""),
        decide=_estimate_decider(lambda m: m.agreement.top1_interval),
    ),
    GateSpec(
        "min_cosine",
        "--min-cosine",
        ">=",
        -1.0,
        1.0,
        "",
        ".5f",
        lambda m, b: ("agreement.cosine_mean", m.agreement.cosine_mean, ""),
        decide=_estimate_decider(lambda m: m.agreement.cosine_interval),
    ),
    GateSpec("max_p99_ms", "--max-p99-ms", "<=", 0.0, math.inf, " ms", ".3f", _candidate_p99, strict_lo=True),
    GateSpec("min_speedup", "--min-speedup", ">=", 0.0, math.inf, "x", ".3f", _speedup, strict_lo=True),
    GateSpec("max_class_drop", "--max-class-drop", "<=", 0.0, 100.0, " points", ".2f", _worst_class, decide=_decide_classes),
)
ACCURACY_GATES = ("max_top1_drop", "min_agreement", "min_cosine", "max_class_drop")
LABEL_GATES = ("max_top1_drop", "max_class_drop")  # need labelled validation data (check_label_gates)
GATE_OPTIONS = ("mode", "default_floor")  # how the gates are judged, not thresholds


@dataclass(frozen=True)
class Floor:
    """The default floor (docs/gates.md): what a build with no accuracy gate still promises.

    Each is judged on evidence: it fails only when the metric's whole 95% interval is on the
    failing side, so a healthy model is never failed on a straddle or on a few unlucky samples.
    """

    min_cosine: float = 0.99  # mean logit cosine (t interval)
    min_margin_agreement: float = 97.0  # percent, top-1 agreement on decisive samples (Clopper-Pearson)
    max_top1_drop: float = 3.0  # points, paired top-1 drop (Tango), with labels only


FLOOR = Floor()


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
    check_mode(gates)


def check_label_gates(gates: Gates, choice: DataChoice) -> None:
    """Raise UsageError (exit 2) when a gate that needs labels is set but the validation data has none."""
    if choice.labelled:
        return
    for s in SPECS:
        if s.field in LABEL_GATES and getattr(gates, s.field) is not None:
            raise UsageError(
                f"{s.flag} needs labelled validation data, but {choice.unlabelled_reason()}",
                hint="pass --val with labels (an image folder with one subfolder per class, or a .npz with a 'labels' "
                "array), or gate on --min-agreement / --min-cosine, which need no labels",
            )


def check_mode(gates: Gates) -> None:
    """UsageError (exit 2) for an unknown ``--gate-mode`` or a non-boolean floor switch."""
    from rescompile.readers import short

    if gates.mode is not None and gates.mode not in MODES:
        raise UsageError(f"unknown gate mode {short(gates.mode)}", hint="--gate-mode point (the default) or confident")
    if gates.default_floor is not None and not isinstance(gates.default_floor, bool):
        raise UsageError(f"default-floor must be true or false, got {short(gates.default_floor)}")


def gate_mode(gates: Gates) -> str:
    """``point`` (the default) or ``confident``."""
    return gates.mode or "point"


def any_gate(gates: Gates) -> bool:
    return any(getattr(gates, s.field) is not None for s in SPECS)


def accuracy_gates(gates: Gates) -> Gates:
    """Only the gates that measure accuracy (what ``--auto-fallback`` tries to pass), with how they are judged."""
    return Gates(**{f: getattr(gates, f) for f in (*ACCURACY_GATES, *GATE_OPTIONS)})


def floor_applies(gates: Gates) -> bool:
    """The default floor is checked when no accuracy gate is set and it is not turned off (``--no-default-gates``)."""
    return gates.default_floor is not False and not any(getattr(gates, f) is not None for f in ACCURACY_GATES)


def load_gates(path: Path) -> Gates:
    """Read a YAML gates recipe: a mapping of gate names (``max-top1-drop`` or ``max_top1_drop``) to numbers.

    The mapping may sit at the top level or under a ``gates:`` key. ``mode: confident`` (or ``point``)
    sets how they are judged, ``default-floor: false`` turns the default floor off.

    Raises:
        UsageError: unreadable file, unknown key, or a value that is not a number.
    """
    from rescompile.readers import read_yaml, short

    path = Path(path)
    doc = read_yaml(path, "gates file")
    if isinstance(doc, dict) and isinstance(doc.get("gates"), dict):
        doc = doc["gates"]
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{path} holds no gates", hint="write e.g. 'max-top1-drop: 1.0', 'min-agreement: 98' and 'mode: confident'")
    known = {f.name for f in fields(Gates)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"{path}: unknown gate {short(key)}", hint="one of: " + ", ".join(k.replace("_", "-") for k in sorted(known)))
        if name in GATE_OPTIONS:
            values[name] = value  # checked by check_mode
            continue
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


def _decided(
    name: str, metric: str, value: float, threshold: float, comparison: str, unit: str, fmt: str, d: stats.Decision | None, mode: str
) -> GateResult:
    """A GateResult from a value and (when the metric has an interval) its decision, with the message every renderer shows."""
    shown = f"{value:{fmt}}{unit}"
    if d is None:
        ok = value <= threshold if comparison == "<=" else value >= threshold
        return GateResult(name, metric, value, threshold, ok, f"{metric} = {shown}, threshold {comparison} {threshold:g}{unit}", comparison)
    ok = d.passed if mode != FLOOR_MODE else d.side != "unsafe"
    result = GateResult(name, metric, value, threshold, ok, "", comparison, mode, float(d.lo), float(d.hi), d.side, d.samples_to_settle)
    msg = f"{metric} = {shown} {result.interval_text(fmt)}, threshold {comparison} {threshold:g}{unit}"
    if mode == "confident" and not ok and d.side == "unsafe":
        msg += "; the whole interval is on the failing side"
    elif mode == "confident" and not ok:
        msg += " (confident mode: the interval must lie wholly on the passing side)"
    elif mode == FLOOR_MODE and not ok:
        msg += "; the whole interval is below the floor" if comparison == ">=" else "; the whole interval is above the floor"
    settle = result.settle_text()
    result.message = msg + (f"; {settle}" if settle else "")
    return result


def _class_note(m: Measurement, threshold: float, mode: str, passed: bool) -> str:
    """The classes that miss a failed per-class gate: point drop above it (point), interval reaching past it (confident)."""
    if passed:
        return ""
    if mode == "point":
        bad = [d for d in m.per_class if d.drop is not None and d.drop.point > threshold]
    else:
        bad = [d for d in m.per_class if d.drop is not None and d.drop.hi > threshold]
    bad.sort(key=lambda d: (-(d.drop.point if d.drop is not None else 0.0), d.label))
    shown = ", ".join(
        f"{_class_name(m, d.label)} {d.drop.point:.2f} [{d.drop.lo:.2f}, {d.drop.hi:.2f}]"
        for d in bad[:CLASSES_SHOWN]
        if d.drop is not None
    )
    more = f" and {len(bad) - CLASSES_SHOWN} more" if len(bad) > CLASSES_SHOWN else ""
    return f"; classes: {shown}{more}" if shown else ""


def evaluate_gates(measurement: Measurement, gates: Gates) -> list[GateResult]:
    """Check ``measurement``'s typed results against ``gates``; one result per enabled gate, in :data:`SPECS` order,
    then the default floor's (:func:`floor_gates`) when no accuracy gate is set and the floor is on."""
    check_thresholds(gates)
    batch = gate_batch(measurement, gates)
    mode = gate_mode(gates)
    out: list[GateResult] = []
    for s in SPECS:
        threshold = getattr(gates, s.field)
        if threshold is None:
            continue
        metric, value, missing = s.read(measurement, batch)
        if value is None:
            msg = f"{metric} = {missing}, threshold {s.comparison} {threshold:g}{s.unit}"
            out.append(GateResult(s.name, metric, None, float(threshold), False, msg, s.comparison))
            continue
        decision = None if s.decide is None else s.decide(measurement, float(threshold), s.comparison, mode)
        result = _decided(s.name, metric, value, float(threshold), s.comparison, s.unit, s.fmt, decision, mode)
        if s.field == "max_class_drop":
            result.message += _class_note(measurement, float(threshold), mode, result.passed)
        out.append(result)
    if floor_applies(gates):
        out += floor_gates(measurement)
    return out


def floor_gates(m: Measurement, floor: Floor = FLOOR) -> list[GateResult]:
    """The default floor's gates (``floor_cosine``, ``floor_margin_agreement``, ``floor_top1_drop``), judged on evidence.

    Each fails only when its metric's whole 95% interval is on the failing side. The margin-aware
    agreement abstains (passes, no value) when no sample is decisive, the top-1 drop when there are no labels.
    """
    out: list[GateResult] = []
    agr = m.agreement
    cos = agr.cosine_interval
    d = None if cos is None else stats.decide_estimate(cos, floor.min_cosine, ">=", "confident")
    out.append(_decided("floor_cosine", "agreement.cosine_mean", agr.cosine_mean, floor.min_cosine, ">=", "", ".5f", d, FLOOR_MODE))
    metric = "agreement.margin.agreement"
    ma = agr.margin.agreement if agr.margin is not None else None
    if ma is None:
        why = "no decisive sample (near-tied FP32 logits)" if agr.margin is not None else "not measured"
        msg = f"{metric} = n/a ({why}): the floor abstains, threshold >= {floor.min_margin_agreement:g}%"
        out.append(GateResult("floor_margin_agreement", metric, None, floor.min_margin_agreement, True, msg, ">=", FLOOR_MODE))
    else:
        d = stats.decide_estimate(ma, floor.min_margin_agreement, ">=", "confident")
        out.append(_decided("floor_margin_agreement", metric, ma.point, floor.min_margin_agreement, ">=", "%", ".2f", d, FLOOR_MODE))
    drop = m.accuracy.top1_drop_interval
    metric = "accuracy.top1_drop"
    if drop is None:
        msg = f"{metric} = n/a (no labels): the floor abstains, threshold <= {floor.max_top1_drop:g} points"
        out.append(GateResult("floor_top1_drop", metric, None, floor.max_top1_drop, True, msg, "<=", FLOOR_MODE))
    else:
        d = stats.decide_estimate(drop, floor.max_top1_drop, "<=", "confident")
        out.append(_decided("floor_top1_drop", metric, drop.point, floor.max_top1_drop, "<=", " points", ".2f", d, FLOOR_MODE))
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

    def failure(self, after: str = "", *, result: object = None, where: str = "", tried: Collection[str] = ()) -> GateFailed | None:
        """The GateFailed (exit 1) naming every failed gate, carrying ``result`` (what the command made), with
        ``after`` appended; None when all pass. ``where`` follows "failed" (``" on this device"``); ``tried``:
        the floor's remedies the build already used, left out of its hint (:func:`floor_hint`)."""
        failures = self.failures
        if not failures:
            return None
        head = f"{len(failures)} of {len(self.gates)} gate(s) failed{where}:\n  "
        floor = any(g.mode == FLOOR_MODE and not g.passed for g in self.gates)
        return GateFailed(head + "\n  ".join(failures) + after, hint=floor_hint(tried) if floor else None, result=result)


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
