"""Q/DQ quantization: decide placement (policy), then insert it (insert)."""

from rescompile.quantize.insert import insert_qdq
from rescompile.quantize.policy import Policy, QuantPlan, plan_qdq

__all__ = ["Policy", "QuantPlan", "insert_qdq", "plan_qdq"]
