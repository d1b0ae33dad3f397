"""``rescompile doctor``: what this machine can do (libraries, TensorRT, GPU, CPU INT8 features).

Every probe is guarded: doctor reports a broken install, it never crashes on one.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rescompile._version import __version__, module_version
from rescompile.commands.base import app, console

# CPU flags that matter for INT8 on ONNX Runtime's x86 kernels.
INT8_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The ``flags`` (x86) or ``Features`` (ARM) of the first processor in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


class _Absent(Exception):
    """A probe found the thing missing (reported as its message, without an exception type)."""


def _probe(fn: Callable[[], str]) -> tuple[bool, str]:
    try:
        return True, fn()
    except _Absent as exc:
        return False, str(exc)
    except ImportError as exc:
        return False, f"not installed ({exc})"
    except Exception as exc:  # doctor reports, it never crashes
        return False, f"{type(exc).__name__}: {exc}"


def _tensorrt() -> str:
    from rescompile.engine.settings import parse_version

    trt = importlib.import_module("tensorrt")
    v = parse_version(str(trt.__version__))
    kind = "explicit Q/DQ, strongly typed" if v.major >= 11 else "Q/DQ via STRONGLY_TYPED" if v.major == 10 else "too old"
    return f"{trt.__version__} ({kind})"


def _gpu() -> str:
    from rescompile.engine.device import find_gpu

    info, how = find_gpu(0)
    if info is None:
        raise _Absent(f"no CUDA GPU visible: {how}")
    return f"{info.name}, compute capability {info.compute_capability[0]}.{info.compute_capability[1]} (via {how})" + (
        f", L4T {info.l4t}" if info.l4t else ""
    )


def _cuda_python() -> str:
    """cuda-python against the driver: cuda-python N.x needs a driver for CUDA N (fails at the first call otherwise)."""
    from rescompile.engine.device import cuda_python_problem, driver_version, parse_driver_version

    version = module_version("cuda.bindings")
    drv = driver_version()
    if drv is None:
        raise _Absent(f"cuda-python {version}; no NVIDIA driver loaded, nothing to check it against")
    problem = cuda_python_problem(version, drv)
    if problem is not None:
        raise _Absent(problem)
    major, minor = parse_driver_version(drv)
    return f"cuda-python {version} runs on this driver (CUDA {major}.{minor})"


def _cpu() -> str:
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    flags = cpu_flags(text)
    model = next((ln.partition(":")[2].strip() for ln in text.splitlines() if ln.lower().startswith("model name")), "")
    have = [f for f in INT8_CPU_FLAGS if f in flags]
    return f"{model or platform.machine()}; INT8-relevant flags: {', '.join(have) or 'none'}"


def _trtexec() -> str:
    import shutil

    path = shutil.which("trtexec") or ("/usr/src/tensorrt/bin/trtexec" if Path("/usr/src/tensorrt/bin/trtexec").exists() else None)
    if path is None:
        raise _Absent("trtexec is not on PATH nor in /usr/src/tensorrt/bin")
    return path


def _jetson_power() -> str:
    """nvpmodel's mode, whether jetson_clocks locked the GPU clock, the GPU clock now (latency is read with these)."""
    from rescompile.engine.jetson import module_model, power_state

    state = power_state()
    if state is None:
        raise _Absent("not a Jetson (no /etc/nv_tegra_release)")
    mhz = f"{state.gpu_cur_hz / 1e6:.0f} MHz" if state.gpu_cur_hz else "GPU clock unknown"
    locked = {True: "clocks locked", False: "clocks NOT locked", None: "clock lock unknown"}[state.clocks_locked]
    detail = f"{module_model() or 'Jetson'}: power mode {state.mode or 'unknown'}, {locked}, {mhz}"
    warnings = state.warnings()
    if warnings:
        raise _Absent(detail + "; " + "; ".join(warnings))
    return detail


def collect() -> list[tuple[str, bool, str]]:
    """(item, ok, detail) for every probe."""
    rows: list[tuple[str, bool, str]] = [
        ("python", True, f"{platform.python_version()} ({platform.machine()})"),
        ("rescompile", True, __version__),
    ]
    for name in ("numpy", "torch", "onnx", "onnxruntime", "onnxsim", "cuda.bindings"):
        ok, detail = _probe(lambda n=name: module_version(n))  # type: ignore[misc]
        rows.append((name, ok, detail))
    for item, fn in (
        ("tensorrt", _tensorrt),
        ("trtexec", _trtexec),
        ("CUDA GPU", _gpu),
        ("cuda-python vs driver", _cuda_python),
        ("Jetson power", _jetson_power),
        ("CPU", _cpu),
    ):
        ok, detail = _probe(fn)
        rows.append((item, ok, detail))
    return rows


@app.command()
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Report library versions, TensorRT, the GPU and the CPU's INT8 features (never fails)."""
    rows = collect()
    if json_out:
        import json

        console.print_json(json.dumps([{"item": i, "ok": ok, "detail": d} for i, ok, d in rows]))
        return
    t = Table(title="rescompile doctor")
    t.add_column("item", no_wrap=True)
    t.add_column("ok")
    t.add_column("detail")
    for item, good, detail in rows:
        t.add_row(item, "[green]yes[/]" if good else "[yellow]no[/]", escape(detail))
    console.print(t)
    status = {i: o for i, o, _ in rows}
    if not status.get("tensorrt") or not status.get("CUDA GPU"):
        console.print(
            "TensorRT engines cannot be built here: `rescompile engine` prints the trtexec command for "
            "the device; `rescompile build` validates on ONNX Runtime (CPU).",
            highlight=False,
        )
