"""Option groups: a frozen dataclass of Typer options that a command takes as one parameter.

Typer wants every option as a parameter of the command function; a command that takes a dozen
groups instead is easier to read. :func:`expand_groups` gives Typer the flat signature (each
group's fields, in order) and hands the command one instance per group::

    @dataclass(frozen=True)
    class RayOptions(OptionGroup):
        ray: RayOpt = False
        ray_address: RayAddressOpt = None

    @app.command()
    def calibrate(model: ModelPath, scale: RayOptions) -> None: ...   # --ray, --ray-address
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any


class OptionGroup:
    """Base of option groups (frozen dataclasses whose fields are ``Annotated`` Typer options)."""


def _group_type(hint: Any) -> type[OptionGroup] | None:
    return hint if isinstance(hint, type) and issubclass(hint, OptionGroup) and dataclasses.is_dataclass(hint) else None


def expand_groups(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every option-group parameter replaced by the group's fields (for Typer).

    Raises:
        TypeError: two parameters (of groups or of ``fn``) share a name: a programming error.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type[OptionGroup], list[str]]] = {}
    for p in inspect.signature(fn).parameters.values():
        group = _group_type(hints.get(p.name))
        if group is None:
            params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
            continue
        field_hints = typing.get_type_hints(group, include_extras=True)
        fields = [f for f in dataclasses.fields(group) if f.init]  # type: ignore[arg-type]
        groups[p.name] = (group, [f.name for f in fields])
        params += [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=field_hints[f.name]) for f in fields
        ]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{fn.__qualname__}: option names repeat across its groups: {sorted(n for n in names if names.count(n) > 1)}")
    if not groups:
        return fn

    @functools.wraps(fn)
    def call(**kwargs: Any) -> Any:
        for name, (group, fields) in groups.items():
            kwargs[name] = group(**{f: kwargs.pop(f) for f in fields})
        return fn(**kwargs)

    # Typer reads the signature (inspect.signature honours __signature__) and the docstring.
    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    )
    call.__annotations__ = {}
    return call
