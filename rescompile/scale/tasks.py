"""Running library functions as Ray tasks: errors come back as values and are raised again on the driver.

A :class:`RescompileError` raised in a task (bad data in a shard, say) reaches the user as the
same one-line message and exit code as without Ray, not as a remote traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rescompile.errors import RescompileError


def task_result(fn: Callable[..., Any]) -> Callable[..., tuple[str, Any]]:
    """``fn`` returning ``("ok", value)``, or ``("error", (class name, exit code, message, hint))`` for a RescompileError."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> tuple[str, Any]:
        try:
            return "ok", fn(*args, **kwargs)
        except RescompileError as exc:
            return "error", (type(exc).__name__, exc.exit_code, exc.message, exc.hint)

    return run


def unwrap(result: tuple[str, Any]) -> Any:
    """The value of a :func:`task_result`, or its error raised again as the same kind of RescompileError."""
    status, value = result
    if status == "ok":
        return value
    from rescompile import errors

    name, code, message, hint = value
    found = getattr(errors, name, None)
    cls: type[RescompileError] = found if isinstance(found, type) and issubclass(found, RescompileError) else RescompileError
    exc = RescompileError.__new__(cls)
    RescompileError.__init__(exc, message, hint=hint)
    exc.exit_code = code
    raise exc


def gather(ray: Any, refs: list[Any], on_done: Callable[[int], None] | None = None) -> list[Any]:
    """The values of ``refs`` in order (as they finish, ``on_done(index)``); the first error is raised."""
    index = {ref: i for i, ref in enumerate(refs)}
    out: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            i = index[ref]
            out[i] = unwrap(ray.get(ref))
            if on_done is not None:
                on_done(i)
    return out
