"""Every module imports with only the required dependencies (what a fresh interpreter loads: tests/integration/test_fresh_process.py)."""

import importlib
import pkgutil

import rescompile


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(rescompile.__path__, "rescompile.")]
    assert "rescompile.pipeline" in names and "rescompile.cli" in names
    for name in names:
        importlib.import_module(name)
