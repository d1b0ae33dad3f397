"""The placement proof under a policy found by name: :func:`verify_int8` picks the registered policy (the plan's,
the one named, or the one whose ``detect`` recognises the Q/DQ) and runs :func:`rescompile.graph.verify.prove_int8`
with it. The proof's rules are in ``graph/verify.py`` and the policies' own in their modules (docs/placement-rules.md).
"""

from __future__ import annotations

import onnx

from rescompile.errors import UsageError
from rescompile.graph.verify import Plan, VerifyReport, Violation, prove_int8
from rescompile.quantize.registry import detect_policy, get_policy

__all__ = ["detect_policy", "verify_int8"]


def verify_int8(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: Plan | None = None, policy: str | None = None) -> VerifyReport:
    """Check ``int8`` against ``fp32`` under a policy (and ``plan``, a QuantPlan, when given).

    Args:
        fp32: the simplified FP32 model the INT8 model was made from.
        int8: the Q/DQ model.
        plan: the QuantPlan used: its policy, kept layers and quantized tensors are checked too.
        policy: a registered policy name when no plan is given (default: detected from the
            Q/DQ, e.g. UINT8 activations meaning onnxruntime).

    Returns:
        A VerifyReport; ``ok`` is False when any rule is violated (an unknown policy is a ``plan`` violation).
    """
    name = (plan.policy if plan is not None else None) or policy or detect_policy(int8)
    try:
        placement = get_policy(name)
    except UsageError:
        report = VerifyReport(name)
        report.violations.append(Violation("plan", "graph", f"unknown policy {name!r}"))
        return report
    return prove_int8(fp32, int8, placement, plan)
