"""``rescompile deploy --backend tensorrt`` on a real GPU: engine built from the bundle, fusions checked, validated.

Runs only where ``import tensorrt`` works and a CUDA GPU is visible (``pytest -m gpu``); skipped elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("tensorrt")

from rescompile.cli import app  # noqa: E402
from rescompile.engine.device import find_gpu  # noqa: E402

_FOUND, _WHY = find_gpu(0)
if _FOUND is None:
    pytest.skip(f"no CUDA GPU: {_WHY}", allow_module_level=True)

pytestmark = pytest.mark.gpu


def test_deploy_builds_checks_fusions_and_validates(demo_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "dep"
    result = CliRunner().invoke(app, ["deploy", str(demo_bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "deploy.json").read_text())
    assert report["backend"] == "tensorrt" and report["passed"] is True
    assert {g["name"] for g in report["gates"]} == {"min-agreement", "engine_residual_fusion"}
    assert (out / "model.plan").is_file() and (out / "model.plan.json").is_file()
    assert json.loads((out / "model.plan.json").read_text())["residual_fusion"]["adds"]
    # issue 20: opt = the batch deploy validates with; each layer's precision; the Jetson power state where there is one
    engine = report["engine"]
    assert engine["settings"]["profile"]["opt"][0] == 32 and engine["settings"]["rest_precision"] == "fp16"
    assert engine["layer_precision"]["layers"] and engine["dla"] is None
    assert ("jetson" in report["host"]) is Path("/etc/nv_tegra_release").exists()
