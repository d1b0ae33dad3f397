"""cuda-python pinned to the driver's CUDA major: the doctor check and the pip extras (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from rescompile.commands.doctor import collect
from rescompile.engine.device import cuda_python_problem, parse_driver_version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_driver_version_integer_is_major_minor() -> None:
    assert parse_driver_version(12060) == (12, 6) and parse_driver_version(13000) == (13, 0)


def test_cuda_python_newer_than_the_driver_is_named_with_its_fix() -> None:
    # JetPack 6: CUDA 12.6 driver; an unpinned `cuda-python>=12` resolves to 13.x there.
    msg = cuda_python_problem("13.0.2", 12060)
    assert msg is not None
    assert "cuda-python 13.0.2 needs a CUDA 13 driver" in msg and "CUDA 12.6" in msg
    assert "pip install 'cuda-python>=12,<13'" in msg and "rescompile[tensorrt-cu12]" in msg


@pytest.mark.parametrize(
    ("bindings", "driver"), [("12.6.2", 12060), ("12.9.0", 13000), ("13.5.0", 13010), ("13.0.0", None), ("unknown", 12060)]
)
def test_no_problem_when_the_driver_is_as_new(bindings: str, driver: int | None) -> None:
    assert cuda_python_problem(bindings, driver) is None


def _extras() -> dict[str, list[Requirement]]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return {k: [Requirement(r) for r in v] for k, v in extras.items()}


def test_every_tensorrt_extra_pins_cuda_python_to_one_cuda_major() -> None:
    pinned = {}
    for extra, reqs in _extras().items():
        for r in reqs:
            if r.name != "cuda-python":
                continue
            lows = [Version(s.version) for s in r.specifier if s.operator == ">="]
            highs = [Version(s.version) for s in r.specifier if s.operator == "<"]
            assert lows and highs and highs[0].major == lows[0].major + 1 and highs[0] == Version(f"{highs[0].major}"), extra
            pinned[extra] = lows[0].major
    assert pinned["tensorrt-cu12"] == 12 and pinned["tensorrt-cu13"] == 13 and pinned["tensorrt"] == 12
    assert pinned["jetpack6"] == 12 and pinned["jetpack7"] == 13
    for extra in ("tensorrt-cu12", "tensorrt-cu13"):  # the TensorRT wheel is built for the same CUDA major
        (trt,) = [r for r in _extras()[extra] if r.name.startswith("tensorrt")]
        assert trt.name == extra


def test_doctor_has_a_cuda_python_driver_row() -> None:
    rows = {item: (ok, detail) for item, ok, detail in collect()}
    ok, detail = rows["cuda-python vs driver"]
    assert detail.startswith(("cuda-python", "not installed"))
    assert ok == ("runs on this driver" in detail)
