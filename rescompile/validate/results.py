"""The report of ``build`` and ``validate`` as one typed value; :meth:`Report.to_dict` is ``report.json``.

``report.json`` follows ``rescompile/schemas/report.schema.json`` (schema id
:data:`rescompile.validate.schema.REPORT_SCHEMA`). The :class:`~rescompile.validate.run.Measurement`
(accuracy, agreement, per-class, latency) is the part both commands share, and ``deploy`` too; each
section the pipeline adds is a field, serialized only when present. Gates and ``passed`` are filled
by :func:`rescompile.validate.gates.judge`. :meth:`Report.from_dict` reads a report.json back
(``rescompile compare``, re-rendering): the measurement, the model, the gates and the layerwise blame
and the auto-fallback record come back typed; the sections whose types live above ``validate/``
(stages, calibration, engine, the validation choice, warnings) come back as :class:`RawSection`, as written.
Renderers (Markdown, JUnit, HTML, console) take a Report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rescompile.errors import UsageError
from rescompile.validate.gates import GateResult
from rescompile.validate.layerwise import Layerwise, keep_fp_pattern
from rescompile.validate.run import Measurement
from rescompile.validate.schema import REPORT_SCHEMA


class Section(Protocol):
    """A report section: anything that serializes to its JSON object."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class RawSection:
    """A section read back from a report.json, kept as written (its producer's type lives above ``validate/``)."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def section_dict(section: Section | None) -> dict[str, Any]:
    """``section.to_dict()``, or an empty dict for a missing section (what renderers read of untyped sections)."""
    return {} if section is None else section.to_dict()


@dataclass
class FallbackState:
    """One model the auto-fallback search measured on the gate split, and its cost."""

    top1: float | None
    top1_drop: float | None
    agreement: float
    cosine_mean: float
    gates_passed: bool
    failed_gates: list[str]
    shortfall: float  # how far the accuracy gates are from passing (points; cosine x100); 0 when they pass
    fp_macs_share: float  # share of weighted-layer MACs not quantized
    p50_ms: float  # latency at the smallest latency batch (a short estimate)

    def error(self, axis: str) -> float:
        """The Pareto table's accuracy axis (``FallbackRecord.pareto_axis``), lower is better."""
        if axis == "accuracy.top1_drop" and self.top1_drop is not None:
            return self.top1_drop
        if axis == "agreement.cosine_mean":
            return 1.0 - self.cosine_mean
        return 100.0 - self.agreement


@dataclass
class FallbackStart(FallbackState):
    """The model the search started from, and whether it is on the Pareto front."""

    pareto: bool = False


@dataclass(frozen=True)
class FallbackUnit:
    """What one step keeps in FP: a weighted layer, or a residual block (main-branch weighted layers and its Add)."""

    kind: str  # "layer" | "block"
    name: str  # the layer's node name, or the block's Add
    nodes: tuple[str, ...]  # node names kept in FP
    ops: tuple[str, ...]

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(keep_fp_pattern(n) for n in self.nodes)

    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "nodes": list(self.nodes), "ops": list(self.ops)}


@dataclass
class RankScore:
    """A candidate reverted alone, on the ranking subset."""

    nmse: float  # mean over samples of ||logits - fp32||^2 / ||fp32||^2
    flips: int  # samples whose top-1 class differs from FP32's
    gain: float  # NMSE of the model it was reverted from minus ``nmse``
    base: int  # the number of accepted steps of the model it was reverted from (stale when < the current)


@dataclass
class FallbackStep:
    """One unit tried: what it kept in FP, its ranking score, and the gate split's verdict on it."""

    unit: FallbackUnit
    keep_fp: list[str]  # the --keep-fp patterns added
    fusion: str  # the fusion it gives up, in words
    fusions_lost: list[str]  # residual Adds whose fusion it gives up
    rank: int  # 1 = the first choice at this step
    score: RankScore
    accepted: bool  # False: stepped back (it made the gate shortfall worse)
    after: FallbackState
    gained_agreement: float  # points of top-1 agreement this step bought
    gained_top1: float | None
    cost_ms: float  # latency added at the smallest latency batch
    cost_macs_share: float  # share of MACs moved to FP by this step
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unit"] = self.unit.to_dict()
        return d


@dataclass
class FallbackSplit:
    """Which validation samples ranked candidates and which judged the gates."""

    seed: int
    stratified: bool
    validation_samples: int
    ranking_samples: int
    gate_samples: int
    ranking_subset_samples: int
    ranking_indices: list[int]
    ranking_subset_indices: list[int]


@dataclass
class FallbackRanking:
    """How candidates were ranked: on which runner, by which metric, over how many samples, at what cost."""

    runner: str
    metric: str  # "nmse"
    samples: int  # the ranking subset
    start_nmse: float  # NMSE of the starting model on the ranking subset
    candidates: int  # units offered
    runs: int  # models run on the ranking split or subset


@dataclass
class FallbackRecord:
    """What auto-fallback did (``rescompile.pipeline.fallback.Fallback.record()``): report.json's ``fallback``.

    docs/fallback.md#report describes every key.
    """

    limit: int
    unit: str  # layer | block | auto
    passed: bool
    stopped: str  # why the search ended
    kept_fp: list[str]  # the patterns of the accepted steps, in order
    judged_on: str  # "gate split"
    split: FallbackSplit
    ranking: FallbackRanking
    gate_runs: int
    pareto_axis: str
    seconds: float
    initial: FallbackStart
    steps: list[FallbackStep] = field(default_factory=list)

    @property
    def accepted(self) -> list[FallbackStep]:
        return [s for s in self.steps if s.accepted]

    @property
    def final(self) -> FallbackState:
        acc = self.accepted
        return acc[-1].after if acc else self.initial

    def note(self) -> str:
        """The report's note on where its accuracy was measured."""
        sp = self.split
        return (
            f"accuracy and gates are measured on the auto-fallback's gate split ({sp.gate_samples} of {sp.validation_samples} "
            f"validation samples); the other {sp.ranking_samples} ranked the candidates and would flatter the result"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


@dataclass
class ModelSection:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    reference: str | None = None  # validate: the FP32 reference as given

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.reference is not None:
            d["reference"] = self.reference
        return d | {"input_shape": list(self.input_shape), "num_classes": self.num_classes}


@dataclass
class Report:
    """``report.json`` of ``build`` or ``validate``.

    ``measurement`` is what :func:`rescompile.validate.run.validate` measured (source, samples, runners,
    accuracy, agreement, per-class, latency, speedup, memory, settings, timings, scale).
    """

    measurement: Measurement
    model: ModelSection
    validation: Section | None  # how the validation data was chosen (rescompile.data.holdout.DataChoice)
    notes: list[str] = field(default_factory=list)
    stages: Section | None = None
    calibration: Section | None = None
    warnings: list[Section] | None = None  # build: findings about the calibration data (maybe none)
    layerwise: Layerwise | None = None
    fallback: FallbackRecord | None = None
    engine: Section | None = None
    build: dict[str, Any] | None = None  # validate of a build folder: BuildFolder.record()
    gates: list[GateResult] = field(default_factory=list)
    passed: bool | None = None  # set by judge()

    @property
    def candidate(self) -> str:
        return self.measurement.candidate

    @property
    def samples(self) -> int:
        return self.measurement.samples

    @property
    def all_passed(self) -> bool:
        """``passed`` as report.json records it: the verdict, else whether every recorded gate passed."""
        return self.passed if self.passed is not None else all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``rescompile.report/1``)."""
        d = self.measurement.to_dict()
        d["model"] = self.model.to_dict()
        if self.validation is not None:
            d["validation"] = self.validation.to_dict()
        sections: dict[str, Section | None] = {
            "stages": self.stages,
            "calibration": self.calibration,
            "layerwise": self.layerwise,
            "fallback": self.fallback,
            "engine": self.engine,
        }
        d.update({k: v.to_dict() for k, v in sections.items() if v is not None})
        if self.notes:
            d["notes"] = list(self.notes)
        if self.warnings is not None:
            d["warnings"] = [w.to_dict() for w in self.warnings]
        if self.build is not None:
            d["build"] = self.build
        d["gates"] = [g.to_dict() for g in self.gates]
        d["passed"] = self.all_passed
        return d

    @classmethod
    def from_dict(cls, doc: Any, what: str = "report") -> Report:
        """Read a report.json document back (``to_dict(from_dict(d)) == d`` for a report rescompile wrote).

        Raises:
            UsageError: not a rescompile report, an unsupported schema, or a missing or mistyped field;
                the message names the field (``report.json: field 'accuracy.candidate.top1' is ...``).
        """
        from rescompile.readers import from_mapping, short

        if not isinstance(doc, dict):
            raise UsageError(f"{what}: expected a JSON object, got {type(doc).__name__}")
        schema = doc.get("schema")
        if not str(schema or "").startswith("rescompile.report/"):
            raise UsageError(f"{what} is not a rescompile report (no 'schema': '{REPORT_SCHEMA}')")
        if schema != REPORT_SCHEMA:
            raise UsageError(f"{what}: report schema {short(schema)} is not supported", hint="upgrade rescompile")
        for key in ("accuracy", "agreement", "latency"):
            if key not in doc:
                raise UsageError(f"{what}: report has no {key!r} section")
        measurement = Measurement.from_dict(doc, what)
        parts = from_mapping(_Parts, {k: doc[k] for k in _PART_KEYS if k in doc}, what)
        model = parts.model or ModelSection("model", (), 0)

        def raw(value: dict[str, Any] | None) -> RawSection | None:
            return None if value is None else RawSection(value)

        return cls(
            measurement,
            model,
            raw(parts.validation),
            list(parts.notes),
            stages=raw(parts.stages),
            calibration=raw(parts.calibration),
            warnings=None if parts.warnings is None else [RawSection(w) for w in parts.warnings],
            layerwise=parts.layerwise,
            fallback=parts.fallback,
            engine=raw(parts.engine),
            build=parts.build,
            gates=list(parts.gates),
            passed=parts.passed,
        )


@dataclass
class _Parts:
    """The fields of a report.json besides the measurement's, with the types :meth:`Report.from_dict` checks."""

    model: ModelSection | None = None
    validation: dict[str, Any] | None = None
    stages: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    layerwise: Layerwise | None = None
    fallback: FallbackRecord | None = None
    engine: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] | None = None
    build: dict[str, Any] | None = None
    gates: list[GateResult] = field(default_factory=list)
    passed: bool | None = None


_PART_KEYS = tuple(_Parts.__dataclass_fields__)
