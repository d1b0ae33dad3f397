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


def _intervals(m: Measurement) -> list[tuple[str, Any]]:
    """The 95% intervals of the accuracy metrics as properties (``top1_drop.lo``, ``agreement.top1.hi`` ...)."""
    acc, agr = m.accuracy, m.agreement
    out: list[tuple[str, Any]] = []
    d = acc.top1_drop_interval
    if d is not None:
        out += [("top1_drop.lo", d.lo), ("top1_drop.hi", d.hi), ("top1_drop.method", d.method), ("top1_drop.mcnemar_p", d.p_exact)]
    if agr.top1_interval is not None:
        out += [("agreement.top1.lo", agr.top1_interval.lo), ("agreement.top1.hi", agr.top1_interval.hi)]
    if agr.cosine_interval is not None:
        out += [("agreement.cosine_mean.lo", agr.cosine_interval.lo), ("agreement.cosine_mean.hi", agr.cosine_interval.hi)]
    ma = agr.margin
    if ma is not None:
        out += [("agreement.margin.decisive", ma.decisive), ("agreement.margin.decisive_flips", ma.decisive_flips)]
        if ma.agreement is not None:
            a = ma.agreement
            out += [("agreement.margin.top1", a.point), ("agreement.margin.lo", a.lo), ("agreement.margin.hi", a.hi)]
    return out


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
    skipped = sum(1 for g in gates if g.abstained)
    seconds = sum(float(v) for v in m.timings.values())
    root = ET.Element("testsuites", name="rescompile", tests=str(len(gates)), failures=str(failures), errors="0")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(gates)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{seconds:.3f}",
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
        *_intervals(m),
        *_validation(validation),
    ):
        shown = "n/a" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        ET.SubElement(props, "property", name=key, value=shown)
    classname = f"{suite}.{model}"
    for g in gates:
        case = ET.SubElement(ts, "testcase", classname=classname, name=g.name, time="0")
        if g.lo is not None:
            cprops = ET.SubElement(case, "properties")
            for key, value in (("mode", g.mode), ("lo", g.lo), ("hi", g.hi), ("side", g.side), ("samples_to_settle", g.samples_to_settle)):
                if value is not None:
                    ET.SubElement(cprops, "property", name=key, value=f"{value:.6g}" if isinstance(value, float) else str(value))
        if g.abstained:
            ET.SubElement(case, "skipped", message=g.message)
        elif not g.passed:
            fail = ET.SubElement(case, "failure", message=g.message, type="GateFailed")
            fail.text = f"{g.name}: {g.metric} = {g.value}, threshold {g.comparison} {g.threshold:g}"
        else:
            ET.SubElement(case, "system-out").text = g.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
