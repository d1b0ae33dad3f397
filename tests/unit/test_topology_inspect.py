"""``rescompile inspect``: the block map table and JSON, and the proof (exit 1 naming the node when broken)."""

from __future__ import annotations

import json

import onnx
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.io import sha256_file
from rescompile.quantize import Policy
from tests.models import quantize, simplified

runner = CliRunner()


def test_block_map_table_and_json(tiny_onnx, tmp_path):
    onnx.save(tiny_onnx, tmp_path / "m.onnx")
    result = runner.invoke(app, ["inspect", str(tmp_path / "m.onnx"), "--json", str(tmp_path / "b.json")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 residual Adds" in result.output and "projection (Conv)" in result.output and "identity" in result.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["block_map"]["residual_adds"] == 2 and "proof" not in doc


def test_model_without_residual_add(tmp_path):
    onnx.save(simplified("plain"), tmp_path / "plain.onnx")
    result = runner.invoke(app, ["inspect", str(tmp_path / "plain.onnx")], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "no residual Add" in result.output


def test_proof_passes_for_the_files_of_a_build(tiny_onnx, tmp_path):
    """The simplified model, INT8 model and plan given one by one (a build folder is covered by test_build_integrity)."""
    plan, int8 = quantize(tiny_onnx, Policy.ONNXRUNTIME)
    onnx.save(tiny_onnx, tmp_path / "model.simplified.onnx")
    onnx.save(int8, tmp_path / "model.int8.onnx")
    (tmp_path / "qdq_plan.json").write_text(plan.to_json())
    names = ("model.simplified.onnx", "model.int8.onnx", "qdq_plan.json")
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "schema": "rescompile.manifest/1",
                "artifacts": {n: {"sha256": sha256_file(tmp_path / n), "bytes": (tmp_path / n).stat().st_size} for n in names},
            }
        )
    )
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json", str(tmp_path / "p.json")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "proof (onnxruntime policy): PASS" in result.output
    proof = json.loads((tmp_path / "p.json").read_text())["proof"]
    assert proof["ok"] and proof["rules"]["residual"]["checked"] == 2


def test_proof_failure_exits_1_naming_node_and_rule(tiny_onnx, tmp_path):
    _, int8 = quantize(tiny_onnx, Policy.TENSORRT)
    onnx.save(tiny_onnx, tmp_path / "fp32.onnx")
    onnx.save(int8, tmp_path / "int8.onnx")
    # The tensorrt graph, checked against the onnxruntime policy, breaks its rules.
    result = runner.invoke(
        app,
        ["inspect", str(tmp_path / "fp32.onnx"), "--int8", str(tmp_path / "int8.onnx"), "--policy", "onnxruntime"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1
    assert "FAIL" in result.output and "[residual] /blocks/blocks.0/Add" in result.output
    assert "placement rule(s) of the onnxruntime policy" in result.stderr  # the build's words (pipeline.stages.proof_error)
    assert "Traceback" not in result.output + result.stderr


def test_bad_policy_is_a_usage_error(tiny_onnx, tmp_path):
    onnx.save(tiny_onnx, tmp_path / "m.onnx")
    result = runner.invoke(app, ["inspect", str(tmp_path / "m.onnx"), "--int8", str(tmp_path / "m.onnx"), "--policy", "x"])
    assert result.exit_code == 2 and "unknown policy" in result.stderr
