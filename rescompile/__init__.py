"""rescompile: an edge-deployment compiler and INT8 quantization pipeline for residual networks.

``rescompile.build(...)`` runs every stage; each stage is also its own function
(``load_model``, ``export_onnx``, ``simplify``, ``plan_qdq``, ``collect_stats``,
``insert_qdq``, ``verify_int8``, ``rescompile.pipeline.validate_models``).
"""

from __future__ import annotations

from typing import Any

from rescompile._version import __version__


def build(cfg: Any = None, **overrides: Any) -> Any:
    """Run the whole pipeline; see :func:`rescompile.pipeline.build`."""
    from rescompile.pipeline import build as _build

    return _build(cfg, **overrides)


__all__ = ["__version__", "build"]
