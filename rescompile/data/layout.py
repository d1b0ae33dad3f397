"""The memory layout of image arrays (``nchw`` or ``nhwc``): the one check of a layout value, the one precedence rule.

``--layout`` (build, calibrate, validate, bundle), a recipe's ``layout:`` key and
:func:`rescompile.data.sources.open_source` all check a value here, so each says the same thing.
"""

from __future__ import annotations

from typing import Any

LAYOUTS = ("nchw", "nhwc")
DEFAULT_LAYOUT = "nchw"


def check_layout(value: Any, what: str = "layout") -> str:
    """``value`` when it is a layout; otherwise UsageError ``"<what> must be nchw or nhwc, not <value>"`` (exit 2).

    Args:
        value: what the user gave.
        what: how the message names it: ``--layout``, ``<recipe>: layout``.
    """
    if value not in LAYOUTS:
        from rescompile.errors import UsageError
        from rescompile.readers import short

        raise UsageError(f"{what} must be nchw or nhwc, not {short(value)}")
    return str(value)


def data_layout(flag: str, recipe: dict[str, Any]) -> str:
    """The layout to read data with: ``--layout`` when the user changed it, else the recipe's, else ``nchw``."""
    return str(recipe.get("layout", flag)) if flag == DEFAULT_LAYOUT else flag
