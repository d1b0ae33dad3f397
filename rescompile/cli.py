"""The ``rescompile`` command (entry point ``rescompile.cli:main``): every command module, registered on one app.

The app, its consoles and the mapping of errors to exit codes live in ``rescompile.commands.base``;
each module of ``rescompile.commands`` registers its command(s) on it when imported here.
Exit codes: 0 success, 1 a gate (or parity/verification check) failed, 2 bad input or usage,
3 a missing dependency, 4 an internal error; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), unless the
build was already published: then the build's own code (0, or 1 for ``<out>.failed``), and a line saying so.
"""

from __future__ import annotations

# Importing a command module registers its command(s) on app; `rescompile --help` lists them in this order.
from rescompile.commands import (  # noqa: F401
    build,
    bundle,
    calibrate,
    compare,
    deploy,
    doctor,
    engine,
    inspect,
    stages,  # export, simplify, quantize
    sweep,
    validate,
    version,
)
from rescompile.commands.base import app, finish_after_publish

__all__ = ["app", "main"]


def main() -> None:
    finish_after_publish()  # a Ctrl-C or SIGTERM after the build was published exits as the build did, and says so
    app(prog_name="rescompile")


if __name__ == "__main__":
    main()
