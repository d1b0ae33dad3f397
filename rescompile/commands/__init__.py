"""CLI command groups: every module here registers its commands on ``rescompile.cli.app``.

A module is imported by its presence; it uses ``from rescompile.cli import app, run_cli``.
"""

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")
