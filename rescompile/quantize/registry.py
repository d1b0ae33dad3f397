"""Placement policies by name: the protocol every policy implements, and the registry that finds them.

A placement policy is one module under ``rescompile/quantize/`` (``policy_trt.py``,
``policy_ort.py``) holding one object that implements :class:`PlacementPolicy`: its name, its
scheme and rule texts (codes defined in docs/placement-rules.md), its plan, its own proof checks
and how to recognise a graph it placed. The CLI's ``--policy`` choices and help come from here.

Built-in policies are imported on first use (their module's ``POLICY``); others register with
:func:`register` or through the ``rescompile.policies`` entry-point group
(``name = "package.module:POLICY"``). The registry sits above the policies: a policy module never
imports it. The table of names it fills is ``catalog.py`` (below the policies and the plan types).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rescompile.errors import UsageError
from rescompile.quantize.catalog import DEFAULT_POLICY, REGISTERED, entry_points, policy_help, policy_names

if TYPE_CHECKING:
    import onnx

    from rescompile.graph.qdq import QdqView, VerifyReport
    from rescompile.quantize.policy import QuantPlan

__all__ = [
    "DEFAULT_POLICY",
    "PlacementPolicy",
    "all_policies",
    "detect_policy",
    "get_policy",
    "parse_policy",
    "plan_qdq",
    "policy_help",
    "policy_names",
    "register",
]
_BUILTINS = {"tensorrt": "rescompile.quantize.policy_trt", "onnxruntime": "rescompile.quantize.policy_ort"}  # catalog.BUILTIN


@runtime_checkable
class PlacementPolicy(Protocol):
    """Where Q/DQ goes for one target runtime, with which scheme, and how to prove it."""

    name: str  # what --policy takes
    summary: str  # one line for help texts
    backend: str  # the runtime whose fusions it targets ("auto" picks it for that --backend)
    scheme: dict[str, str]  # activations / weights / bias -> how they are stored
    rules: dict[str, str]  # rule code -> text (every code defined in docs/placement-rules.md)

    def plan(self, model: onnx.ModelProto, *, keep_fp: tuple[str, ...], keep_first_last: bool) -> QuantPlan:
        """Decide Q/DQ placement for a simplified FP32 model."""
        ...

    def check(self, fp32: onnx.ModelProto, view: QdqView, report: VerifyReport, kept: set[str]) -> None:
        """Add this policy's own proof violations (scheme, residual Adds, fusions) to ``report``."""
        ...

    def detect(self, view: QdqView) -> bool:
        """Whether an INT8 graph's Q/DQ look like this policy placed them."""
        ...


def register(policy: PlacementPolicy) -> PlacementPolicy:
    """Add ``policy`` under its name (replacing one of the same name); returns it, so it can decorate."""
    if not isinstance(policy, PlacementPolicy):
        raise TypeError(f"{policy!r} does not implement PlacementPolicy")
    REGISTERED[policy.name] = policy
    return policy


def detect_policy(int8: onnx.ModelProto) -> str:
    """The first registered policy (the default last) whose ``detect`` recognises the graph's Q/DQ."""
    from rescompile.graph.qdq import QdqView

    view = QdqView(int8)
    return next((p.name for p in all_policies() if p.name != DEFAULT_POLICY and p.detect(view)), DEFAULT_POLICY)


def get_policy(name: str) -> PlacementPolicy:
    """The policy called ``name``.

    Raises:
        UsageError: no policy has that name (the hint lists the known ones).
    """
    if name not in REGISTERED:
        if name in _BUILTINS:
            register(importlib.import_module(_BUILTINS[name]).POLICY)
        elif name in (eps := entry_points()):
            register(eps[name].load())
    if name not in REGISTERED:
        raise UsageError(f"unknown policy {name!r}", hint=f"one of: {', '.join(policy_names())}")
    policy: PlacementPolicy = REGISTERED[name]
    return policy


def all_policies() -> list[PlacementPolicy]:
    return [get_policy(n) for n in policy_names()]


def parse_policy(value: str, backend: str) -> PlacementPolicy:
    """``auto`` picks the policy that targets ``backend`` (tensorrt for TensorRT, onnxruntime for the CPU)."""
    if value == "auto":
        return next((p for p in all_policies() if p.backend == backend), get_policy(DEFAULT_POLICY))
    return get_policy(value)


def plan_qdq(
    model: onnx.ModelProto,
    policy: str = DEFAULT_POLICY,
    *,
    keep_fp: tuple[str, ...] = (),
    keep_first_last: bool = False,
) -> QuantPlan:
    """Decide Q/DQ placement for ``model`` (FP32, simplified, BatchNorm folded).

    Args:
        policy: a registered placement policy (``rescompile.quantize.registry``), e.g. ``tensorrt``.
        keep_fp: node-name globs or op types to leave in higher precision.
        keep_first_last: keep the first and the last weighted layer in higher precision.

    Returns:
        A QuantPlan: every quantized tensor with its consumers and the rule that put it there.

    Raises:
        UsageError: an unknown policy, a ``keep_fp`` pattern that matches no node, or a node placement
            does not support (control flow, non-standard ops: rule G1).
    """
    from rescompile.quantize.policy import check_supported

    placement = get_policy(str(policy))
    check_supported(model)
    return placement.plan(model, keep_fp=keep_fp, keep_first_last=keep_first_last)
