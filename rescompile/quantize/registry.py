"""Placement policies by name: the protocol every policy implements, and the registry that finds them.

A placement policy is one module under ``rescompile/quantize/`` (``policy_trt.py``,
``policy_ort.py``) holding one object that implements :class:`PlacementPolicy`: its name, its
scheme and rule texts (codes defined in docs/placement-rules.md), its plan, its own proof checks
and how to recognise a graph it placed. The CLI's ``--policy`` choices and help come from here.

Built-in policies are imported on first use; others register with :func:`register` or through
the ``rescompile.policies`` entry-point group (``name = "package.module:POLICY"``).
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rescompile.errors import UsageError

if TYPE_CHECKING:
    import onnx

    from rescompile.graph.verify import QdqView, VerifyReport
    from rescompile.quantize.policy import QuantPlan

DEFAULT_POLICY = "tensorrt"
_BUILTINS = {"tensorrt": "rescompile.quantize.policy_trt", "onnxruntime": "rescompile.quantize.policy_ort"}
_REGISTRY: dict[str, PlacementPolicy] = {}
_ENTRY_POINTS = "rescompile.policies"


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
    _REGISTRY[policy.name] = policy
    return policy


@functools.cache
def _entry_points() -> dict[str, Any]:
    """Installed ``rescompile.policies`` entry points, scanned once per process."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=_ENTRY_POINTS)}


def policy_names() -> list[str]:
    """Every known policy name: the built-ins first, then registered and entry-point ones."""
    names = [*_BUILTINS, *(n for n in _REGISTRY if n not in _BUILTINS)]
    return names + sorted(n for n in _entry_points() if n not in names)


def get_policy(name: str) -> PlacementPolicy:
    """The policy called ``name``.

    Raises:
        UsageError: no policy has that name (the hint lists the known ones).
    """
    if name not in _REGISTRY:
        if name in _BUILTINS:
            importlib.import_module(_BUILTINS[name])  # the module registers its policy
        elif name in (eps := _entry_points()):
            register(eps[name].load())
    if name not in _REGISTRY:
        raise UsageError(f"unknown policy {name!r}", hint=f"one of: {', '.join(policy_names())}")
    return _REGISTRY[name]


def all_policies() -> list[PlacementPolicy]:
    return [get_policy(n) for n in policy_names()]


def parse_policy(value: str, backend: str) -> PlacementPolicy:
    """``auto`` picks the policy that targets ``backend`` (tensorrt for TensorRT, onnxruntime for the CPU)."""
    if value == "auto":
        return next((p for p in all_policies() if p.backend == backend), get_policy(DEFAULT_POLICY))
    return get_policy(value)


def policy_help(auto: str = "") -> str:
    """``tensorrt | onnxruntime | auto`` for option help, from the registry (no policy module imported)."""
    return " | ".join(policy_names()) + (f" | auto ({auto})" if auto else "")
