"""Q/DQ quantization: decide placement (a policy from registry.py), then insert it (insert.py).

Names are imported on first use, so ``rescompile.quantize.registry`` (the CLI's ``--policy``
help) loads without onnx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rescompile.quantize.insert import insert_qdq
    from rescompile.quantize.policy import Policy, QuantPlan
    from rescompile.quantize.registry import plan_qdq

__all__ = ["Policy", "QuantPlan", "insert_qdq", "plan_qdq"]


def __getattr__(name: str) -> Any:
    if name == "insert_qdq":
        from rescompile.quantize.insert import insert_qdq

        return insert_qdq
    if name == "plan_qdq":
        from rescompile.quantize.registry import plan_qdq

        return plan_qdq
    if name in ("Policy", "QuantPlan"):
        from rescompile.quantize import policy

        return getattr(policy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
