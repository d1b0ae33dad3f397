"""Reports: JSON Schema validity, JUnit counts, HTML well-formedness and rendering, Markdown, compare."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rescompile.errors import UsageError
from rescompile.quantize import Policy
from rescompile.report.compare import REGRESSED, Tolerances, compare_reports, load_report
from rescompile.report.html import SECTIONS, render_html
from rescompile.report.junit import render_junit
from rescompile.report.markdown import render_markdown
from rescompile.report.write import REPORT_FILES, write_reports
from rescompile.runtime.runners import signed_activation_quantizers
from rescompile.validate.notes import TENSORRT_GRAPH_ON_CPU, latency_notes
from rescompile.validate.results import Report
from rescompile.validate.schema import SCHEMA_PATH, schema_errors
from tests import reports

jsonschema = pytest.importorskip("jsonschema")


def typed(doc: dict) -> Report:
    """The report.json document as the typed Report renderers take."""
    return Report.from_dict(doc)


def junit(doc: dict) -> str:
    r = typed(doc)
    return render_junit(r.measurement, r.gates, model=r.model.name, validation=r.validation)


@pytest.fixture(scope="module")
def full_report(tiny_onnx, tiny_data, quantize_tiny):
    return reports.full_report(tiny_onnx, tiny_data, quantize_tiny)


def test_report_validates_against_the_schema(full_report):
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))
    assert schema_errors(full_report) == []
    assert full_report["schema"] == "rescompile.report/1"
    assert {r["role"] for r in full_report["latency"]} == {"baseline", "candidate"}
    assert set(full_report["speedup_int8_vs_fp32_p50"]) == {"1", "4"}


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda r: r.pop("agreement"), "(root)"),
        (lambda r: r["accuracy"]["candidate"].update(top1=140.0), "accuracy/candidate/top1"),
        (lambda r: r["latency"][0].update(role="other"), "latency/0/role"),
        (lambda r: r.update(schema="rescompile.report/0"), "schema"),
        (lambda r: r["gates"][0].update(passed="yes"), "gates/0/passed"),
        (lambda r: r["notes"].append(3), "notes/1"),
    ],
)
def test_schema_catches_broken_reports(full_report, mutate, where):
    broken = copy.deepcopy(full_report)
    mutate(broken)
    errors = schema_errors(broken)
    assert errors and any(e.startswith(where) for e in errors), errors


def test_latency_note_only_for_a_tensorrt_placed_graph_timed_on_onnxruntime(tiny_onnx, quantize_tiny):
    graphs = {p: quantize_tiny(p).model for p in (Policy.TENSORRT, Policy.ONNXRUNTIME)}
    trt_plan = quantize_tiny(Policy.TENSORRT).plan
    assert signed_activation_quantizers(graphs[Policy.TENSORRT]) == len(trt_plan.activations) > 0
    assert signed_activation_quantizers(graphs[Policy.ONNXRUNTIME]) == 0  # UINT8 activations
    assert latency_notes(graphs[Policy.TENSORRT], "onnxruntime-int8") == [TENSORRT_GRAPH_ON_CPU]
    assert latency_notes(graphs[Policy.TENSORRT], "tensorrt-int8") == []  # the engine runs it as INT8
    assert latency_notes(graphs[Policy.ONNXRUNTIME], "onnxruntime-int8") == []
    assert latency_notes(tiny_onnx, "onnxruntime-fp32") == []
    assert latency_notes(None, "onnxruntime-int8") == []


def test_the_latency_note_reaches_markdown_and_html(full_report):
    assert full_report["notes"] == [TENSORRT_GRAPH_ON_CPU]
    md = render_markdown(typed(full_report))
    assert f"> **Note:** {TENSORRT_GRAPH_ON_CPU}" in md
    assert md.index("## Latency") < md.index("**Note:**")
    assert "--policy onnxruntime" in render_html(typed(full_report))


def test_write_reports_writes_every_format(tmp_path, full_report):
    write_reports(tmp_path, typed(full_report))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORT_FILES)
    assert schema_errors(json.loads((tmp_path / "report.json").read_text())) == []


def test_junit_has_one_case_per_gate_and_failures_carry_the_message(full_report):
    root = ET.fromstring(junit(full_report))
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in cases] == ["min-agreement", "min-cosine", "max-p99-ms"]
    assert suite.get("tests") == root.get("tests") == "3"
    assert suite.get("failures") == root.get("failures") == str(len(failed)) == "1"
    (fail,) = failed
    assert fail.get("name") == "min-cosine"
    assert fail.find("failure").get("message").startswith("agreement.cosine_mean = ")
    assert "threshold >= 1" in fail.find("failure").get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["samples"] == "24" and props["candidate"] == "onnxruntime-int8"


class _WellFormed(HTMLParser):
    """Checks tag balance (HTML void elements aside) and collects ids, tags and external references."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr", "rect", "line", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(a[key])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def test_html_is_well_formed_self_contained_and_has_every_section(full_report):
    page = render_html(typed(full_report))
    parser = _WellFormed()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert set(SECTIONS) <= parser.ids
    assert parser.tags.get("svg", 0) == 5  # latency at batch 1 and 4, per-class delta, per-layer error, fallback Pareto
    assert parser.tags.get("script", 0) == 0 and parser.external == []
    assert page.startswith("<!DOCTYPE html>") and "FAILED" in page
    assert "/blocks/blocks.0/Add" in page  # per-layer names are in the page (tooltips and table)


def test_html_escapes_untrusted_text(full_report):
    r = copy.deepcopy(full_report)
    r["source"] = "<script>alert(1)</script>"
    r["class_names"] = ["<b>a</b>", "b", "c", "d"]
    page = render_html(typed(r))
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>a</b>" not in page


def test_markdown_lists_gates_worst_classes_and_blame(full_report):
    md = render_markdown(typed(full_report))
    assert md.startswith("# rescompile: tiny onnxruntime-int8 (FAILED)")
    assert "| min-cosine | `agreement.cosine_mean` |" in md and "**FAIL**" in md
    assert "## Worst classes (of 4)" in md and "## Layerwise blame (24 samples)" in md
    assert "## Auto-fallback (gates still fail" in md
    assert "| step | unit | result | top-1 drop | agreement | cosine mean | FP MACs | p50 ms | Pareto | fusion given up |" in md
    assert "| 0 | `(start)` | start |" in md and "judged on the 12-sample gate split" in md


def test_compare_flags_regressions_and_improvements(full_report):
    old = copy.deepcopy(full_report)
    new = copy.deepcopy(full_report)
    assert not [c for c in compare_reports(typed(old), typed(new)) if c.status == REGRESSED]
    new["agreement"]["top1"] -= 2.0
    new["accuracy"]["candidate"]["top1"] += 1.0
    for rec in new["latency"]:
        rec["p50_ms"] *= 1.5
    new["gates"][0]["passed"] = False
    changes = {c.metric: c for c in compare_reports(typed(old), typed(new))}
    assert changes["agreement.top1"].status == REGRESSED and changes["agreement.top1"].delta == pytest.approx(-2.0)
    assert changes["accuracy.candidate.top1"].status == "improved"
    assert changes["latency.candidate.batch1.p50_ms"].status == REGRESSED
    assert changes["gate.min-agreement"].status == REGRESSED and changes["gate.min-agreement"].note == "newly failing"
    lenient = {c.metric: c for c in compare_reports(typed(old), typed(new), Tolerances(accuracy_points=3, check_latency=False))}
    assert lenient["agreement.top1"].status == "same" and "latency.candidate.batch1.p50_ms" not in lenient


def test_schema_file_ships_with_the_package():
    text = Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    assert '"schemas/*.json"' in text and SCHEMA_PATH.is_file()


def test_report_from_dict_round_trips_every_section(full_report):
    report = typed(full_report)
    assert report.measurement.accuracy.candidate.top1 == full_report["accuracy"]["candidate"]["top1"]
    assert report.measurement.latency[0].role == full_report["latency"][0]["role"]
    assert report.layerwise is not None and report.layerwise.ranking == full_report["layerwise"]["ranking"]
    assert [g.name for g in report.gates] == [g["name"] for g in full_report["gates"]]
    assert report.to_dict() == full_report


@pytest.mark.parametrize(
    "mutate, named",
    [
        (lambda r: r["accuracy"]["candidate"].update(top1="high"), "accuracy.candidate.top1"),
        (lambda r: r["agreement"].pop("cosine_mean"), "agreement.cosine_mean"),
        (lambda r: r["latency"][1].update(p99_ms=None), "latency[1].p99_ms"),
        (lambda r: r["latency_plan"]["skipped"].append({"batch": "8", "reason": "x"}), "latency_plan.skipped[0].batch"),
        (lambda r: r["gates"][0].update(passed="yes"), "gates[0].passed"),
        (lambda r: r["layerwise"]["layers"][0].update(jump=[]), "layerwise.layers[0].jump"),
        (lambda r: r["speedup_int8_vs_fp32_p50"].update(fast=2.0), "speedup_int8_vs_fp32_p50"),
        (lambda r: r.update(accuracy=[]), "accuracy"),
    ],
)
def test_a_damaged_report_is_a_usage_error_naming_the_key(tmp_path, full_report, mutate, named):
    broken = copy.deepcopy(full_report)
    mutate(broken)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(UsageError) as exc:
        load_report(path)
    assert exc.value.exit_code == 2 and named in exc.value.message and str(path) in exc.value.message
