"""JUnit XML: each gate a test case, failures carry the gate's message (GitHub Actions, GitLab, Jenkins)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rescompile.validate.results import section_dict

if TYPE_CHECKING:
    from rescompile.validate.gates import GateResult
    from rescompile.validate.results import Section
    from rescompile.validate.run import Measurement


def _validation(validation: Section | None) -> list[tuple[str, Any]]:
    """How the validation set was chosen: ``validation.mode`` (given, demo, held-out, in-sample) and more."""
    choice = section_dict(validation)
    if not choice:
        return []
    return [
        ("validation.mode", choice["mode"]),
        ("validation.in_sample", str(choice["in_sample"]).lower()),
        ("validation.labelled", str(choice["labelled"]).lower()),
        ("validation", choice.get("description", "")),
    ]


def render_junit(
    measurement: Measurement,
    gates: Sequence[GateResult],
    *,
    model: str,
    validation: Section | None = None,
    suite: str = "rescompile.gates",
) -> str:
    """The gates as one JUnit test suite; the measurement's metrics as suite properties (report.json and deploy.json)."""
    m = measurement
    failures = sum(1 for g in gates if not g.passed)
    seconds = sum(float(v) for v in m.timings.values())
    root = ET.Element("testsuites", name="rescompile", tests=str(len(gates)), failures=str(failures), errors="0")
    ts = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(gates)), failures=str(failures), errors="0", skipped="0", time=f"{seconds:.3f}"
    )
    props = ET.SubElement(ts, "properties")
    agr, acc = m.agreement, m.accuracy
    for key, value in (
        ("model", model),
        ("reference", m.reference),
        ("candidate", m.candidate),
        ("samples", m.samples),
        ("top1.reference", acc.reference.top1),
        ("top1.candidate", acc.candidate.top1),
        ("top1_drop", acc.top1_drop),
        ("agreement.top1", agr.top1),
        ("agreement.cosine_mean", agr.cosine_mean),
        *_validation(validation),
    ):
        shown = "n/a" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        ET.SubElement(props, "property", name=key, value=shown)
    classname = f"{suite}.{model}"
    for g in gates:
        case = ET.SubElement(ts, "testcase", classname=classname, name=g.name, time="0")
        if not g.passed:
            fail = ET.SubElement(case, "failure", message=g.message, type="GateFailed")
            fail.text = f"{g.name}: {g.metric} = {g.value}, threshold {g.comparison} {g.threshold:g}"
        else:
            ET.SubElement(case, "system-out").text = g.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
