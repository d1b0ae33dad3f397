"""One gate path for ``build`` and ``validate``: gates evaluated, recorded in the report, and the failure raised.

:func:`judge` evaluates the thresholds (:func:`rescompile.validate.gates.evaluate_gates`) on a
report's measurement, adds the stages' own gates (the TensorRT engine's residual fusion,
:func:`fusion_gate`), records every result in the report and returns the :class:`Verdict`,
whose :meth:`Verdict.failure` is the GateFailed (exit 1) both commands raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rescompile.config import Gates
from rescompile.errors import GateFailed
from rescompile.validate.gates import GateResult, evaluate_gates

if TYPE_CHECKING:
    from rescompile.engine.layerinfo import FusionReport
    from rescompile.engine.tensorrt import EngineBuild
    from rescompile.pipeline.report import Report

FUSION_GATE = "engine_residual_fusion"
UNFUSED_SHOWN = 5


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

    def failure(self, after: str = "") -> GateFailed | None:
        """The GateFailed (exit 1) naming every failed gate, with ``after`` appended; None when all pass."""
        failures = self.failures
        if not failures:
            return None
        return GateFailed(f"{len(failures)} of {len(self.gates)} gate(s) failed:\n  " + "\n  ".join(failures) + after)


def fusion_gate(fusion: FusionReport) -> GateResult:
    """The TensorRT engine's fusion report as a gate: every residual Add fused into an INT8 layer."""
    unfused = [a.add for a in fusion.adds if not a.ok]
    passed = fusion.ok
    message = (
        f"every residual Add ({len(fusion.adds)}) is fused into an INT8 TensorRT layer"
        if passed
        else f"{len(unfused)} residual Add(s) not fused into an INT8 TensorRT layer: {', '.join(unfused[:UNFUSED_SHOWN])}"
        + ("" if fusion.detailed else " (no detailed layer information)")
    )
    return GateResult(FUSION_GATE, "residual Adds not fused into INT8", float(len(unfused)), 0.0, passed, message)


def engine_gates(build: EngineBuild) -> list[GateResult]:
    """The engine stage's own gates: residual fusion, and for a ``--dla-core`` plan the DLA gate (``engine.dla.dla_gate``)."""
    from rescompile.engine.dla import dla_gate

    return [fusion_gate(build.fusion), *([dla_gate(build.dla, build.fusion)] if build.dla is not None else [])]


def judge(report: Report, gates: Gates, extra: Sequence[GateResult] = ()) -> Verdict:
    """Evaluate ``gates`` on ``report``'s measurement, then the stages' ``extra`` gates; record them in ``report``.

    Raises:
        UsageError: nonsense thresholds (exit 2).
    """
    verdict = Verdict([*evaluate_gates(report.measurement.to_dict(), gates), *extra])
    report.gates, report.passed = list(verdict.gates), verdict.passed
    return verdict
