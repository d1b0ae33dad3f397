"""User-facing error types: each carries a message, an optional hint and a CLI exit code."""

from __future__ import annotations


class RescompileError(Exception):
    """Bad input or usage: a clear message, no traceback (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(RescompileError):
    """A bad option, path or input file."""


class GateFailed(RescompileError):
    """A validation gate was missed (exit code 1).

    ``result`` is what the command made before the gates failed (a build's BuildResult of
    ``<out>.failed``, a deploy's DeployResult), for callers that show or record it.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, result: object = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class ParityError(RescompileError):
    """A graph rewrite changed the numerics beyond its stated tolerance (exit code 1)."""

    exit_code = 1


class VerificationError(RescompileError):
    """The INT8 graph does not keep the FP32 topology or breaks a placement rule (exit code 1)."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (staging folders removed); the CLI exits 143.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` blocks do not swallow it.
    """


class MissingDependency(RescompileError):
    """The environment lacks something optional, e.g. TensorRT or a GPU (exit code 3)."""

    exit_code = 3


JETSON_TENSORRT_HINT = (
    "on Jetson, TensorRT comes with JetPack: sudo apt install python3-libnvinfer (not the PyPI tensorrt wheel); "
    "in a virtual environment use python3 -m venv --system-site-packages, since a plain venv hides it"
)


def install_hint(module: str, extra: str, tegra_release: str = "/etc/nv_tegra_release") -> str:
    """How to get ``module``: on a Jetson (``/etc/nv_tegra_release`` exists) TensorRT comes from JetPack's apt, else the extra."""
    from pathlib import Path

    if module == "tensorrt" and Path(tegra_release).exists():
        return JETSON_TENSORRT_HINT
    return f"pip install 'rescompile[{extra}]'"


def require(module: str, *, extra: str):  # type: ignore[no-untyped-def]
    """Import an optional dependency or raise MissingDependency saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{module} is not installed or cannot be imported ({exc})", hint=install_hint(module, extra)) from None
