"""``build --equalize --bias-correction`` through the CLI: the stages' artifacts, report sections and block marks."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from typer.testing import CliRunner

from rescompile.buildfolder import BIAS_CORRECTION, EQUALIZED_ONNX, INT8_ONNX, REPORT_HTML, REPORT_JSON, open_build
from rescompile.cli import app
from rescompile.validate.schema import schema_errors

runner = CliRunner()


def test_build_with_equalize_and_bias_correction_writes_artifacts_and_report_sections(tmp_path: Path) -> None:
    out = tmp_path / "build"
    args = ["build", "--out", str(out), "--equalize", "--bias-correction", "--calib-size", "64", "--val-size", "200"]
    result = runner.invoke(app, [*args, "--latency-runs", "3", "--latency-batch", "1", "-q"])
    assert result.exit_code == 0, result.output
    build = open_build(out)
    build.verify_all()  # the new artifacts are in the manifest, hashes and all
    assert build.config["equalize"] is True and build.config["bias_correction"] is True
    assert {EQUALIZED_ONNX, BIAS_CORRECTION} <= set(build.manifest["artifacts"])
    report = json.loads((out / REPORT_JSON).read_text())
    assert schema_errors(report) == []
    eq, bc = report["stages"]["equalize"], report["stages"]["bias_correction"]
    # the demo ResNet-20: one Conv -> ReLU -> Conv pair per residual block; the stem's ReLU feeds a block (skipped)
    assert eq["pairs_equalized"] == 9 and eq["pairs_skipped"] == 1 and "other consumers" in eq["skipped"][0]["reason"]
    assert eq["parity"]["max_abs_error"] <= eq["parity"]["tolerance"] and eq["parity"]["samples"] == 64
    assert eq["converged"] and eq["scale_min"] < 1 < eq["scale_max"]
    assert bc["layers_corrected"] == 22 and bc["samples"] == 64 and bc["data"] == "calibration"
    assert bc["mean_error_after"] < bc["mean_error_before"] / 10
    record = json.loads((out / BIAS_CORRECTION).read_text())
    assert [x["node"] for x in record["layers"]] == bc["convs"] and all(len(x["shift"]) == x["channels"] for x in record["layers"])
    # the INT8 model carries the corrected biases of the equalized model
    biases = {t.name: t for t in onnx.load(str(out / INT8_ONNX)).graph.initializer}
    assert all(x["bias"] in biases for x in record["layers"])
    html = (out / REPORT_HTML).read_text()
    # in the blocks: 9 pairs x 2 Convs equalized and corrected, the 2 projection shortcuts corrected; the legend's sample
    assert html.count('<text class="changed"') == 20 and html.count(">EQ BC</text>") == 18 + 1 and html.count(">BC</text>") == 2
    assert "changed by --equalize (EQ)" in html
