"""The names of the placement policies (built-in, registered, installed), without loading any policy.

What the CLI's ``--policy`` help and a ``qdq_plan.json`` reader need to know: which names exist.
Loading a policy by its name is ``rescompile.quantize.registry``'s job, which sits above the
policies; this table sits below them, so the plan types (``quantize/policy.py``) can read it.
"""

from __future__ import annotations

import functools
from typing import Any

DEFAULT_POLICY = "tensorrt"
BUILTIN = ("tensorrt", "onnxruntime")  # the modules are named in registry.py, which imports them
REGISTERED: dict[str, Any] = {}  # name -> PlacementPolicy, filled by registry.register
ENTRY_POINTS = "rescompile.policies"


@functools.cache
def entry_points() -> dict[str, Any]:
    """Installed ``rescompile.policies`` entry points, scanned once per process."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def policy_names() -> list[str]:
    """Every known policy name: the built-ins first, then registered and entry-point ones."""
    names = [*BUILTIN, *(n for n in REGISTERED if n not in BUILTIN)]
    return names + sorted(n for n in entry_points() if n not in names)


def policy_help(auto: str = "") -> str:
    """``tensorrt | onnxruntime | auto`` for option help, from the registry (no policy module imported)."""
    return " | ".join(policy_names()) + (f" | auto ({auto})" if auto else "")
