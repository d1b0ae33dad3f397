"""A non-editable wheel carries the demo model and data and runs `rescompile build` from anywhere."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.builds import LATENCY_RUNS

ROOT = Path(__file__).resolve().parents[2]


def outer_site_dirs() -> list[str]:
    """The site-packages folders of the interpreter running the tests (a venv's, or the system's).

    ``python -m venv --system-site-packages`` run from inside a venv sees the *base* interpreter's
    packages, not the outer venv's (where torch and onnxruntime live), so the inner venv gets
    these folders through a .pth file instead: in a plain venv and in CI alike.
    """
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    dirs += [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def test_wheel_install_runs_demo_build(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("rescompile-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("demo_resnet20.pt", "demo_resnet20.json", "demo_calib.npz", "demo_val.npz"):
        assert f"rescompile/assets/{asset}" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    inner_site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # pip runs under the inner interpreter (so the console script's shebang is the inner python), before the
    # outer packages become visible: it must not see, or touch, an outer rescompile.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # Appended after the inner site-packages: the wheel's rescompile wins over an editable install outside.
    (Path(inner_site) / "_outer_site.pth").write_text("\n".join(outer_site_dirs()) + "\n")
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import rescompile; print(rescompile.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert str(venv) in where  # the wheel's copy, not the source tree
    out = tmp_path / "out"
    subprocess.run(
        [venv / "bin" / "rescompile", "build", "--out", str(out), "-q", "--val-size", "100", *LATENCY_RUNS],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 100 and report["accuracy"]["candidate"]["top1"] > 80
