"""What a fresh Python process loads and runs: `import rescompile` stays light, the policy catalog names the built-ins
without loading them, and `python -m rescompile.cli` has every command (each a subprocess: integration)."""

from __future__ import annotations

import subprocess
import sys


def _python(*args: str) -> str:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, timeout=120).stdout


def test_import_rescompile_does_not_load_torch_or_tensorrt():
    out = _python("-c", "import sys, rescompile; print('torch' in sys.modules, 'tensorrt' in sys.modules)").split()
    assert out == ["False", "False"]


def test_the_catalog_names_the_builtin_policies_without_loading_them():
    code = (
        "import sys; from rescompile.quantize.catalog import policy_names; from rescompile.quantize.policy import QuantPlan; "
        "print(policy_names(), sorted(m for m in sys.modules if m.startswith('rescompile.quantize.')))"
    )
    out = _python("-c", code).strip()
    assert out == ("['tensorrt', 'onnxruntime'] ['rescompile.quantize.catalog', 'rescompile.quantize.policy']")


def test_python_dash_m_runs_every_command():
    """`python -m rescompile.cli` registers the commands too (they live on base.app, not on __main__)."""
    assert "jetson" in _python("-m", "rescompile.cli", "targets").lower()
