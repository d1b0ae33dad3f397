"""Which NVIDIA GPU this machine has (name, compute capability, L4T release on Jetson), and TensorRT itself.

The engine builder and the runtime both start here: ``load_tensorrt``, ``require_gpu`` and
``make_logger`` are what a TensorRT runner needs without importing the builder.

Asks CUDA through cuda-python (``cuda.bindings.runtime``; each call returns ``(err, value)``,
and without a GPU ``cudaGetDeviceCount`` fails, e.g. error 35), or through torch when
cuda-python is missing, or through pycuda. Never raises for "no GPU": returns None with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rescompile.engine.sidecar import DeviceInfo

# First line of /etc/nv_tegra_release, e.g. "# R36 (release), REVISION: 4.0, GCID: ..." (format
# from memory of L4T images, not from a primary source: unconfirmed).
_TEGRA = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


def parse_tegra_release(text: str) -> str | None:
    """``"# R36 (release), REVISION: 4.0, ..."`` -> ``"36.4.0"``; None when the text does not match."""
    m = _TEGRA.search(text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def l4t_release(path: Path = Path("/etc/nv_tegra_release")) -> str | None:
    """The L4T release of a Jetson, or None elsewhere."""
    try:
        return parse_tegra_release(path.read_text(errors="replace"))
    except OSError:
        return None


def _jetson_identity(sm_count: int | None) -> tuple[str | None, int | None, str | None]:
    """(L4T release, SM count, module model) for DeviceInfo: the module only where L4T is (a Jetson)."""
    from rescompile.engine.jetson import module_model

    l4t = l4t_release()
    return l4t, sm_count, module_model() if l4t else None


def cudart_module() -> Any:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (12.8+, 13.x) or ``cuda.cudart`` (older 12.x)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        from cuda import cudart  # type: ignore[attr-defined]  # cuda-python < 12.8 only

        return cudart


def _via_cudart(index: int) -> tuple[DeviceInfo | None, str]:
    cudart = cudart_module()

    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return None, f"cudaGetDeviceCount failed: {err.name} ({int(err)})"
    if count <= index:
        return None, f"{count} CUDA device(s), no device {index}"
    err, prop = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        return None, f"cudaGetDeviceProperties failed: {err.name}"
    raw = prop.name
    name = raw.decode(errors="replace").rstrip("\x00") if isinstance(raw, bytes) else str(raw)
    return DeviceInfo(name, (int(prop.major), int(prop.minor)), *_jetson_identity(int(prop.multiProcessorCount))), "cuda-python"


def _via_torch(index: int) -> tuple[DeviceInfo | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False"
    if torch.cuda.device_count() <= index:
        return None, f"{torch.cuda.device_count()} CUDA device(s), no device {index}"
    major, minor = torch.cuda.get_device_capability(index)
    sms = int(torch.cuda.get_device_properties(index).multi_processor_count)
    return DeviceInfo(torch.cuda.get_device_name(index), (major, minor), *_jetson_identity(sms)), "torch"


def _via_pycuda(index: int) -> tuple[DeviceInfo | None, str]:
    import pycuda.driver as cuda  # what many Jetson images carry instead of cuda-python

    cuda.init()
    count = cuda.Device.count()
    if count <= index:
        return None, f"{count} CUDA device(s), no device {index}"
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return DeviceInfo(str(dev.name()), (int(major), int(minor)), *_jetson_identity(None)), "pycuda"


def find_gpu(index: int = 0) -> tuple[DeviceInfo | None, str]:
    """The CUDA device ``index`` and how it was found, or (None, why not)."""
    reasons = []
    for probe in (_via_cudart, _via_torch, _via_pycuda):
        try:
            info, how = probe(index)
        except ImportError as exc:
            reasons.append(f"{probe.__name__[5:]}: not installed ({exc.name})")
            continue
        except Exception as exc:  # a broken driver must not crash `doctor` or the CLI
            reasons.append(f"{probe.__name__[5:]}: {type(exc).__name__}: {exc}")
            continue
        if info is not None:
            return info, how
        reasons.append(f"{probe.__name__[5:]}: {how}")
    return None, "; ".join(reasons)


def load_tensorrt() -> Any:
    """``import tensorrt`` or raise MissingDependency saying how to get it (exit code 3)."""
    from rescompile.errors import require

    return require("tensorrt", extra="tensorrt")


def make_logger(trt: Any, verbose: bool = False) -> Any:
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def require_gpu(index: int = 0) -> DeviceInfo:
    """This machine's CUDA device, or MissingDependency."""
    from rescompile.errors import MissingDependency

    device, why = find_gpu(index)
    if device is None:
        raise MissingDependency(f"no CUDA GPU is visible ({why})", hint="build on the device or a GPU machine")
    return device


def _libcudart() -> Any:
    """The CUDA runtime library TensorRT itself links (``libcudart.so``), through ctypes; None when absent."""
    import ctypes
    import ctypes.util

    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def select_device(index: int) -> str:
    """Make CUDA device ``index`` current for this thread, so TensorRT builds and runs on it.

    TensorRT uses the calling thread's current CUDA device; without this a ``--device 1`` build
    would run on device 0 while the sidecar names device 1. TensorRT itself needs no Python CUDA
    binding, so a device with none of them (pycuda-only Jetson images) still builds: cuda-python,
    else torch with CUDA, else ``cudaSetDevice`` from the CUDA runtime library through ctypes,
    else, for device 0, the runtime's default device. Returns how it was set.

    Raises:
        MissingDependency: device ``index`` > 0 cannot be selected, or CUDA refuses.
    """
    from rescompile.errors import MissingDependency

    reasons = []
    try:
        cudart = cudart_module()
    except ImportError:
        cudart = None
    if cudart is not None:
        (err,) = cudart.cudaSetDevice(index)
        if err == cudart.cudaError_t.cudaSuccess:
            return "cuda-python"
        reasons.append(f"cuda-python: cudaSetDevice({index}) failed: {err.name} ({int(err)})")
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(index)
            return "torch"
        reasons.append("torch: no CUDA")
    except ImportError:
        reasons.append("torch: not installed")
    lib = _libcudart()
    if lib is not None:
        code = int(lib.cudaSetDevice(index))
        if code == 0:
            return "libcudart"
        reasons.append(f"libcudart: cudaSetDevice({index}) returned {code}")
    if index == 0:
        return "default device 0"  # the runtime's current device unless something changed it
    raise MissingDependency(f"cannot select CUDA device {index}: " + "; ".join(reasons), hint="pip install 'rescompile[tensorrt]'")


def parse_driver_version(value: int) -> tuple[int, int]:
    """``cuDriverGetVersion``'s integer (1000*major + 10*minor, e.g. 12060) -> (12, 6)."""
    return value // 1000, (value % 1000) // 10


def cuda_python_problem(bindings_version: str, driver_version: int | None) -> str | None:
    """Why cuda-python ``bindings_version`` cannot run on a driver of ``driver_version``, or None.

    cuda-python/cuda-bindings N.x is built against CUDA N: its runtime calls fail on a driver that
    supports only CUDA < N (e.g. cuda-python 13 on JetPack 6, whose driver is CUDA 12.6). The fix is
    the extra for the platform, which pins cuda-python to the driver's major.
    """
    m = re.match(r"\s*(\d+)", bindings_version)
    if m is None or driver_version is None:
        return None
    major = int(m.group(1))
    drv_major, drv_minor = parse_driver_version(driver_version)
    if major <= drv_major:
        return None
    return (
        f"cuda-python {bindings_version} needs a CUDA {major} driver, but this driver supports CUDA "
        f"{drv_major}.{drv_minor}: pip install 'cuda-python>={drv_major},<{drv_major + 1}' (or "
        f"rescompile[{extra_for_driver(drv_major)}])"
    )


def extra_for_driver(driver_major: int) -> str:
    """The pip extra that pins cuda-python to a driver's CUDA major (see pyproject.toml)."""
    return {12: "tensorrt-cu12", 13: "tensorrt-cu13"}.get(driver_major, "tensorrt")


def driver_version() -> int | None:
    """The NVIDIA driver's CUDA version (``cuDriverGetVersion``), or None when no driver is loaded."""
    try:
        from cuda.bindings import driver
    except ImportError:
        return None
    try:
        err, value = driver.cuDriverGetVersion()
    except Exception:  # libcuda.so missing: no driver
        return None
    return int(value) if err == driver.CUresult.CUDA_SUCCESS else None
