"""The pipeline's report type and its one gate path: Report.to_dict follows the schema, judge() records the
gates and words the failure the same way for build and validate, the engine's fusion report becomes a gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rescompile.config import Gates
from rescompile.data.holdout import DataChoice
from rescompile.data.sources import DataSource
from rescompile.engine.layerinfo import check_residual_fusion
from rescompile.pipeline.report import ModelSection, make_report
from rescompile.quantize import Policy
from rescompile.runtime.runners import OnnxRuntimeRunner
from rescompile.validate.gates import FUSION_GATE, fusion_gate, judge
from rescompile.validate.notes import latency_notes
from rescompile.validate.reference import ValidationInputs
from rescompile.validate.run import ValidateSettings, compute_reference, validate
from tests.layerinfo_fixtures import PUBLISHED, blocks, load, without_formats

jsonschema = pytest.importorskip("jsonschema")


def _json(doc: dict) -> dict:
    return json.loads(json.dumps(doc))


def _fusion(doc: dict) -> object:
    return check_residual_fusion(doc, blocks(doc))


def test_fused_published_engine_passes_the_fusion_gate():
    doc = load(PUBLISHED[0])
    gate = fusion_gate(_fusion(doc))
    n = len(doc["_residual_adds"])
    assert gate.passed and gate.name == FUSION_GATE and gate.value == 0.0 and gate.threshold == 0.0
    assert gate.message == f"every residual Add ({n}) is fused into an INT8 TensorRT layer"


def test_a_float_shortcut_fails_the_fusion_gate_naming_the_add():
    doc = load(PUBLISHED[0])
    doc["Layers"][3]["Inputs"][1]["Format/Datatype"] = "Row major linear FP32"  # layer1.0's residual input
    fusion = _fusion(doc)
    (unfused,) = [a.add for a in fusion.adds if not a.ok]
    gate = fusion_gate(fusion)
    assert not gate.passed and gate.value == 1.0
    assert gate.message == f"1 residual Add(s) not fused into an INT8 TensorRT layer: {unfused}"


def test_unreadable_formats_fail_the_fusion_gate_for_every_add():
    doc = without_formats(load(PUBLISHED[0]))
    gate = fusion_gate(_fusion(doc))
    assert not gate.passed and gate.value == float(len(doc["_residual_adds"]))


@pytest.fixture(scope="module")
def measured(tiny_onnx, tiny_data, quantize_tiny):
    """A real measurement of the tiny model's INT8 candidate (labelled), and the candidate."""
    int8 = quantize_tiny(Policy.TENSORRT).model
    labels = np.arange(len(tiny_data)) % 4
    inputs = ValidationInputs.from_arrays("tiny", tiny_data, labels)
    settings = ValidateSettings(batch_size=8, latency=replace(ValidateSettings().latency, batches=(1,), runs=3, warmup=1))
    ref = compute_reference(OnnxRuntimeRunner(tiny_onnx, "onnxruntime-fp32"), inputs, settings)
    m = validate(ref, OnnxRuntimeRunner(int8, "onnxruntime-int8"), inputs, settings=settings)
    choice = DataChoice.validation_only("given", DataSource("tiny", len(tiny_data), labels=labels))
    return m, int8, choice


def _reports(measured):
    """The report as build assembles it (calibration warnings, no build record) and as validate does (a build record)."""
    m, int8, choice = measured
    as_build = make_report(m, ModelSection("tiny", (1, 16, 16), 4), choice, int8, warnings=[])
    record = {"folder": "build/tiny", "hashes_verified": False, "gates_passed": True, "overrides": ["--no-verify-hashes"]}
    as_validate = make_report(
        m,
        ModelSection("model.int8", (1, 16, 16), 4, reference="tiny"),
        choice,
        int8,
        notes=["--no-verify-hashes: not checked"],
        build=record,
    )
    return as_build, as_validate


def test_build_and_validate_reports_follow_the_schema_and_get_the_same_verdict(measured):
    from rescompile.validate.schema import schema_errors

    gates = Gates(min_agreement=50, min_cosine=1.0, max_p99_ms=1e9)
    as_build, as_validate = _reports(measured)
    verdicts = [judge(r, gates) for r in (as_build, as_validate)]
    docs = [json.loads(json.dumps(r.to_dict())) for r in (as_build, as_validate)]
    assert [schema_errors(d) for d in docs] == [[], []]
    assert docs[0]["gates"] == docs[1]["gates"] and [d["passed"] for d in docs] == [False, False]
    assert [g["name"] for g in docs[0]["gates"]] == ["min-agreement", "min-cosine", "max-p99-ms"]
    (e1, e2) = (v.failure() for v in verdicts)
    assert e1 is not None and e2 is not None and e1.message == e2.message and e1.exit_code == 1
    assert e1.message.startswith("1 of 3 gate(s) failed:\n  FAIL min-cosine: agreement.cosine_mean = ")
    # what only one command adds stays in its own report
    assert (
        "warnings" in docs[0]
        and "build" not in docs[0]
        and docs[0]["model"] == {"name": "tiny", "input_shape": [1, 16, 16], "num_classes": 4}
    )
    assert docs[1]["build"]["folder"] == "build/tiny" and docs[1]["model"]["reference"] == "tiny"
    assert docs[1]["notes"] == latency_notes(measured[1], "onnxruntime-int8") + ["--no-verify-hashes: not checked"]


def test_the_engine_gate_is_judged_after_the_thresholds(measured):
    doc = load(PUBLISHED[0])
    doc["Layers"][3]["Inputs"][1]["Format/Datatype"] = "Row major linear FP32"
    report, _ = _reports(measured)
    verdict = judge(report, Gates(min_agreement=0), [fusion_gate(_fusion(doc))])
    assert [g.name for g in report.gates] == ["min-agreement", FUSION_GATE] and report.passed is False
    assert verdict.failed_names == [FUSION_GATE]
    error = verdict.failure("\nafter")
    assert error is not None and error.message.startswith("1 of 2 gate(s) failed:\n  FAIL engine_residual_fusion: ")
    assert error.message.endswith("\nafter")
    assert judge(report, Gates(min_agreement=0)).failure() is None and report.to_dict()["passed"] is True


def test_engine_section_and_gate_of_a_gpu_build(measured, tmp_path):
    """What a ``backend="tensorrt"`` build reports, without a GPU: the engine's data (settings computed by the pure
    engine layer, the fusion of a published dump) becomes the report's engine section and its last gate."""
    from rescompile.engine.settings import EngineOptions, InputSpec, compute_settings, parse_version
    from rescompile.engine.sidecar import DeviceInfo
    from rescompile.engine.targets import get_target
    from rescompile.engine.tensorrt import EngineBuild
    from rescompile.pipeline.report import EngineSection
    from rescompile.pipeline.stages import Engine
    from rescompile.validate.schema import schema_errors

    target = get_target("jetson-orin-nx-8gb")
    settings = compute_settings(target, InputSpec("input", None, (1, 16, 16)), EngineOptions(batches=(1, 8)), parse_version("10.3"))
    fusion = _fusion(load(PUBLISHED[1]))
    built = EngineBuild(
        tmp_path / "model.plan",
        tmp_path / "model.plan.json",
        tmp_path / "model.plan.layers.json",
        settings,
        DeviceInfo("Orin", (8, 7), "36.4.0"),
        "10.3.0",
        fusion,
        None,
        12.5,
    )
    m, int8, choice = measured
    report = make_report(
        m, ModelSection("tiny", (1, 16, 16), 4), choice, int8, warnings=[], engine=EngineSection(Engine(built, target.name))
    )
    verdict = judge(report, Gates(min_agreement=0), [fusion_gate(fusion)])
    doc = json.loads(json.dumps(report.to_dict()))
    assert schema_errors(doc) == [] and verdict.passed and doc["gates"][-1]["name"] == FUSION_GATE
    assert doc["engine"] == {
        "tensorrt_version": "10.3.0",
        "target": "jetson-orin-nx-8gb",
        "build_seconds": 12.5,
        "gpu": {"name": "Orin", "compute_capability": [8, 7], "l4t": "36.4.0", "sm_count": None, "module": None},
        "settings": _json(settings.to_dict()),
        "residual_fusion": _json(fusion.to_dict()),
        "dla": None,  # a --dla-core build records its DLA/GPU layer counts here
        "layer_precision": None,
    }
    assert doc["engine"]["residual_fusion"]["ok"] and doc["engine"]["settings"]["profile"]["max"][0] == 8


def test_deploy_judges_with_the_build_gate_path(measured):
    """deploy.json's report goes through the same judge(): the same gate name gives the same result and message
    as the build's (the fusion gate included), recorded in deploy.json, deploy.md and the GateFailed it raises."""
    from rescompile.deploy.device import DeployReport, DeployResult, render_deploy_md
    from rescompile.report.junit import render_junit

    doc = load(PUBLISHED[0])
    doc["Layers"][3]["Inputs"][1]["Format/Datatype"] = "Row major linear FP32"
    fusion = _fusion(doc)
    gates = Gates(min_agreement=50, min_cosine=1.0)
    build_report, _ = _reports(measured)
    build_verdict = judge(build_report, gates, [fusion_gate(fusion)])
    m = measured[0]
    deployed = DeployReport(
        replace(m, latency=[], speedup={}, latency_plan=None),
        {"name": "tiny"},
        {"file": "tiny.rcb", "sha256": "0" * 64, "build": {}},
        "tensorrt",
        {"target": "jetson-orin-nx-8gb"},
        {"name": "jetson"},
    )
    verdict = judge(deployed, gates, [fusion_gate(fusion)])
    assert [g.to_dict() for g in deployed.gates] == [g.to_dict() for g in build_report.gates]
    assert verdict.failures == build_verdict.failures and verdict.failed_names == ["min-cosine", FUSION_GATE]
    out = deployed.to_dict()
    assert out["schema"] == "rescompile.deploy/1" and out["passed"] is False and out["gates"] == build_report.to_dict()["gates"]
    assert out["accuracy"] == build_report.to_dict()["accuracy"] and "latency" not in out
    result = DeployResult(Path("out"), out, verdict.passed, verdict.failures, deployed)
    error = verdict.failure("\nreport: out/deploy.json", result=result, where=" on this device")
    assert error is not None and error.result is result and error.exit_code == 1
    assert error.message.startswith("2 of 3 gate(s) failed on this device:\n  " + "\n  ".join(build_verdict.failures))
    md = render_deploy_md(deployed)
    assert "| min-cosine | `agreement.cosine_mean` |" in md and f"| {FUSION_GATE} |" in md and "**FAILED**" in md
    assert 'failures="2"' in render_junit(deployed.measurement, deployed.gates, model="tiny", suite="rescompile.deploy")


def test_deploy_json_follows_its_schema_which_shares_report_json_sections(measured):
    from rescompile.deploy.device import DeployReport
    from rescompile.validate.schema import DEPLOY_SCHEMA_PATH, schema_errors

    m = measured[0]
    report = DeployReport(
        replace(m, latency=[], speedup={}, latency_plan=None, timings={"unpack": 0.1, "session": 0.2, "validate": 0.3}),
        {"name": "tiny", "residual_adds": 2},
        {"file": "tiny.rcb", "sha256": "a" * 64, "build": {}},
        "onnxruntime",
        {"onnxruntime_version": "1.32.0", "providers": ["CPUExecutionProvider"]},
        {"name": "host", "python": "3.11"},
    )
    judge(report, Gates(min_agreement=50))
    doc = _json(report.to_dict())
    assert schema_errors(doc, DEPLOY_SCHEMA_PATH) == []
    doc["accuracy"]["candidate"]["top1"] = 140.0  # checked by report.schema.json's definition
    doc["gates"][0]["passed"] = "yes"
    errors = schema_errors(doc, DEPLOY_SCHEMA_PATH)
    assert any(e.startswith("accuracy/candidate/top1") for e in errors) and any(e.startswith("gates/0/passed") for e in errors)
