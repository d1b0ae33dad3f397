"""Every module imports with only the required dependencies, and `import rescompile` stays light."""

import importlib
import pkgutil
import subprocess
import sys

import rescompile


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(rescompile.__path__, "rescompile.")]
    assert "rescompile.pipeline" in names and "rescompile.cli" in names
    for name in names:
        importlib.import_module(name)


def test_import_rescompile_does_not_load_torch_or_tensorrt():
    code = "import sys, rescompile; print('torch' in sys.modules, 'tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
