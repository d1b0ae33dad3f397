"""The gate path of ``build`` and ``validate`` (kept as this import path): it lives in :mod:`rescompile.validate.gates`,
below ``deploy/``, so that ``deploy`` judges with the same :func:`judge`, :class:`Verdict` and :func:`fusion_gate`."""

from __future__ import annotations

from rescompile.validate.gates import FUSION_GATE, UNFUSED_SHOWN, Verdict, engine_gates, fusion_gate, judge

__all__ = ["FUSION_GATE", "UNFUSED_SHOWN", "Verdict", "engine_gates", "fusion_gate", "judge"]
