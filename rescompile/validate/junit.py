"""JUnit XML: each gate a test case, failures carry the gate's message (GitHub Actions, GitLab, Jenkins)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def _validation(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """How the validation set was chosen: ``validation.mode`` (given, demo, held-out, in-sample) and more."""
    choice = report.get("validation")
    if not choice:
        return []
    return [
        ("validation.mode", choice["mode"]),
        ("validation.in_sample", str(choice["in_sample"]).lower()),
        ("validation.labelled", str(choice["labelled"]).lower()),
        ("validation", choice.get("description", "")),
    ]


def render_junit(report: dict[str, Any], suite: str = "rescompile.gates") -> str:
    """The report's gates as one JUnit test suite; metrics as suite properties."""
    gates = report.get("gates", [])
    failures = sum(1 for g in gates if not g["passed"])
    seconds = sum(float(v) for v in (report.get("timings_s") or {}).values())
    root = ET.Element("testsuites", name="rescompile", tests=str(len(gates)), failures=str(failures), errors="0")
    ts = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(gates)), failures=str(failures), errors="0", skipped="0", time=f"{seconds:.3f}"
    )
    props = ET.SubElement(ts, "properties")
    agr, acc = report["agreement"], report["accuracy"]
    for key, value in (
        ("model", report.get("model", {}).get("name", "")),
        ("reference", report.get("reference", "")),
        ("candidate", report.get("candidate", "")),
        ("samples", report["samples"]),
        ("top1.reference", acc["reference"]["top1"]),
        ("top1.candidate", acc["candidate"]["top1"]),
        ("top1_drop", acc["top1_drop"]),
        ("agreement.top1", agr["top1"]),
        ("agreement.cosine_mean", agr["cosine_mean"]),
        *_validation(report),
    ):
        shown = "n/a" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        ET.SubElement(props, "property", name=key, value=shown)
    classname = f"{suite}.{report.get('model', {}).get('name', 'model')}"
    for g in gates:
        case = ET.SubElement(ts, "testcase", classname=classname, name=g["name"], time="0")
        if not g["passed"]:
            fail = ET.SubElement(case, "failure", message=g["message"], type="GateFailed")
            fail.text = f"{g['name']}: {g['metric']} = {g['value']}, threshold {g.get('comparison', '')} {g['threshold']:g}"
        else:
            ET.SubElement(case, "system-out").text = g["message"]
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
