"""The package version (kept apart so that no module needs to import the package itself for it), and how the
version of another installed module is read (``rescompile doctor``)."""

import importlib

__version__ = "0.1.0"


def module_version(name: str) -> str:
    """``name.__version__`` of an installed module (ImportError when it cannot be imported)."""
    mod = importlib.import_module(name)
    return str(getattr(mod, "__version__", "installed (no version)"))
