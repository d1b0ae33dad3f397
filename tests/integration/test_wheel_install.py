"""A non-editable wheel carries the demo model and data and runs `rescompile build` from anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_install_runs_demo_build(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("rescompile-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("demo_resnet20.pt", "demo_resnet20.json", "demo_calib.npz", "demo_val.npz"):
        assert f"rescompile/assets/{asset}" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    where = subprocess.run([venv / "bin" / "python", "-c", "import rescompile; print(rescompile.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout  # fmt: skip
    assert str(venv) in where  # the wheel's copy, not the source tree
    out = tmp_path / "out"
    subprocess.run([venv / "bin" / "rescompile", "build", "--out", str(out), "-q", "--val-size", "100", "--latency-runs", "3"],
                   check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 100 and report["accuracy"]["candidate"]["top1"] > 80
