"""The Typer app every command registers on, its consoles, and the one place errors become exit codes.

Exit codes: 0 success, 1 a gate (or parity/verification check) failed, 2 bad input or
usage, 3 a missing dependency, 4 an internal error (a bug: traceback, please report),
5 the machine failed the command (disk full, quota, read-only file system, I/O error, too many
open files: an ``OSError`` of ``errors.FAULT_ERRNOS`` raised anywhere), 6 a Ray worker or node
or an SSH link was lost for good (retries ran out); 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM) (after the build was published: the build's own 0 or 1). docs/faults.md lists every fault and what is kept.

``app.command()`` registers a command whose body runs under :func:`exit_codes`, whose
option-group parameters (``rescompile.commands.groups``) are expanded for Typer, and whose
``--help`` is laid out by ``rescompile.commands.helpformat`` (panels, 80 columns). So a
command's body only turns options into the library's settings and calls the library.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from rescompile.commands.groups import expand_groups
from rescompile.commands.helpformat import HelpCommand
from rescompile.errors import GateFailed, RescompileError, Terminated, environment_fault

F = TypeVar("F", bound=Callable[..., Any])
# Already an exit, or click's own usage error: not ours to map (click is vendored by recent Typer, hence the lookup).
_CLICK_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)


class App(typer.Typer):
    """A Typer app whose commands map errors to exit codes, take option groups and print panelled help."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:  # type: ignore[override]
        kwargs.setdefault("cls", HelpCommand)
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            register(_mapped(expand_groups(fn)))
            return fn

        return decorator


def _mapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(**kwargs: Any) -> Any:
        with exit_codes():
            return fn(**kwargs)

    return call


app = App(
    name="rescompile",
    help="Compile trained ResNets to INT8 that keeps the skip-add topology: ONNX -> Q/DQ -> TensorRT / ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated (like Ctrl-C raises KeyboardInterrupt), so it cleans up."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise:  # not replaced meanwhile (by _finish_after_publish)
            signal.signal(signal.SIGTERM, previous)


def _after_publish(what: str) -> NoReturn:
    """Ctrl-C or SIGTERM after the build was published: say so, and exit as the build did (0, or 1 for <out>.failed)."""
    from rescompile.publish import last_published

    done = last_published()
    assert done is not None
    code = 0 if done.passed else 1
    err_console.print(
        f"{what} after the build was published: {done.folder}/ is complete; exit {code}", highlight=False, markup=False, soft_wrap=True
    )
    raise typer.Exit(code)


def finish_after_publish() -> None:
    """For the CLI process (``rescompile.cli.main``): once a build is published, Ctrl-C or SIGTERM ends the process
    at once with the build's exit code and says so, wherever it lands (summary, interpreter shutdown)."""
    import signal
    import threading

    from rescompile import publish

    def hook(done: publish.Published) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def finish(signum: int, frame: Any) -> None:
            what = "interrupted" if signum == signal.SIGINT else "terminated"
            code = 0 if done.passed else 1
            os.write(2, f"{what} after the build was published: {done.folder}/ is complete; exit {code}\n".encode())
            os._exit(code)

        signal.signal(signal.SIGINT, finish)
        signal.signal(signal.SIGTERM, finish)

    publish.on_published = hook


@contextmanager
def exit_codes() -> Iterator[None]:
    """Run the body; turn rescompile errors into one-line messages and exit codes (``typer.Exit``).

    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal number, as shells report a process killed by it),
    after the build's staging folder is removed; one that lands after the build was published exits as
    the build did (0, or 1 for ``<out>.failed``) and says the build is complete. An ``OSError`` of ``errors.FAULT_ERRNOS`` (a full disk, a
    read-only or failing file system, too many open files), anywhere in the exception's cause chain, is
    the machine's fault: one line naming the path, exit 5. Anything else is a bug: traceback and exit 4
    (re-raised when RESCOMPILE_DEBUG is set).
    """
    from rescompile.publish import forget_published, last_published

    forget_published()
    try:
        with _sigterm_raises():
            yield
    except _CLICK_EXITS:
        raise
    except RescompileError as exc:
        _print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if last_published() is not None:
            _after_publish("interrupted")
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Terminated:
        if last_published() is not None:
            _after_publish("terminated")
        err_console.print("terminated")
        raise typer.Exit(143) from None
    except Exception as exc:
        fault = environment_fault(exc)  # a full disk, a read-only or failing file system anywhere: not a bug (exit 5)
        if fault is not None:
            _print_error(fault)
            raise typer.Exit(fault.exit_code) from None
        if os.environ.get("RESCOMPILE_DEBUG"):
            raise
        import traceback

        traceback.print_exc()
        err_console.print("[bold red]internal error[/] (a bug in rescompile): please report it with the traceback above.")
        raise typer.Exit(4) from None


def _print_error(exc: RescompileError) -> None:
    # escape: messages and hints hold brackets ("pip install 'rescompile[tensorrt]'") that are not markup
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, markup=True, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[dim]hint: {escape(exc.hint)}[/]", highlight=False)


@contextmanager
def show_failed_result(show: Callable[[Any], None]) -> Iterator[None]:
    """A gate failure that carries its result (``GateFailed.result``, e.g. a build whose gates failed) shows it, then propagates."""
    try:
        yield
    except GateFailed as exc:
        if exc.result is not None:
            show(exc.result)
        raise


def warn(line: str) -> None:
    """A one-line warning on stderr."""
    err_console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def log_to_stderr(quiet: bool) -> None:
    """Show rescompile's INFO messages (e.g. "reusing calibration ranges") on stderr unless ``quiet``."""
    import logging

    logger = logging.getLogger("rescompile")
    if quiet or any(getattr(h, "_rescompile", False) for h in logger.handlers):
        return

    class _ToStderr(logging.Handler):  # resolves stderr at each message (it may be swapped, e.g. by tests)
        _rescompile = True

        def emit(self, record: logging.LogRecord) -> None:
            err_console.print(self.format(record), highlight=False, markup=False, soft_wrap=True)

    handler = _ToStderr()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def open_build_checked(path: Path, *, no_verify_hashes: bool = False, allow_failed_build: bool = False) -> Any:
    """``rescompile.buildfolder.open_build`` for a command: the overrides in effect are printed as warnings."""
    from rescompile.buildfolder import open_build

    build = open_build(path, verify=not no_verify_hashes, allow_failed=allow_failed_build)
    for line in build.warnings():
        warn(line)
    return build


def checked_path(path: Path, *, no_verify_hashes: bool = False, allow_failed_build: bool = False) -> tuple[Path, Any]:
    """``(path, build)``: a file given on the command line, checked against its build's manifest when it is in one."""
    from rescompile.buildfolder import build_of

    build = build_of(path, verify=not no_verify_hashes, allow_failed=allow_failed_build)
    if build is None:
        return path, None
    for line in build.warnings():
        warn(line)
    return build.file(path.name), build
