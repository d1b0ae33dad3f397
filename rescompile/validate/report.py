"""Human-readable reports: Markdown for CI job summaries."""

from __future__ import annotations

from typing import Any


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def render_markdown(report: dict[str, Any]) -> str:
    acc, agr = report["accuracy"], report["agreement"]
    model = report.get("model", {}).get("name", "model")
    status = "PASSED" if report.get("passed", True) else "FAILED"
    lines = [
        f"# rescompile: {model} INT8 ({status})",
        "",
        f"Validation set: {report['samples']} samples from `{report['source']}`.",
        "",
        "| metric | FP32 | INT8 |",
        "|---|---|---|",
        f"| top-1 | {_pct(acc['reference']['top1'])} | {_pct(acc['candidate']['top1'])} |",
        f"| top-5 | {_pct(acc['reference']['top5'])} | {_pct(acc['candidate']['top5'])} |",
        "",
        f"Top-1 agreement {agr['top1']:.2f}%, logit cosine mean {agr['cosine_mean']:.5f} "
        f"(worst {agr['cosine_min']:.5f}), max abs error {agr['max_abs_error']:.4g}.",
        "",
        "| runner | batch | p50 ms | p90 ms | p99 ms | samples/s |",
        "|---|---|---|---|---|---|",
    ]
    for lat in report.get("latency", []):
        lines.append(f"| {lat['runner']} | {lat['batch']} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | "
                     f"{lat['p99_ms']:.2f} | {lat['throughput']:.0f} |")  # fmt: skip
    if report.get("gates"):
        lines += ["", "| gate | value | threshold | result |", "|---|---|---|---|"]
        for g in report["gates"]:
            value = "n/a" if g["value"] is None else f"{g['value']:.4g}"
            lines.append(f"| {g['name']} | {value} | {g['threshold']:g} | {'pass' if g['passed'] else '**FAIL**'} |")
    return "\n".join(lines) + "\n"
