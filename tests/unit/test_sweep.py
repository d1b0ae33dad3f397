"""Sweep files, config keys and the summary's Pareto front (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile.errors import UsageError
from rescompile.sweep.grid import config_key, load_sweep
from rescompile.sweep.summary import accuracy_axis, markdown, pareto, summary, svg_plot


def test_grid_is_the_product_with_stable_keys_and_folders(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "base: {calib: demo-calib, latency_runs: 5}\ngrid:\n  policy: [tensorrt, onnxruntime]\n"
        "  calib_method: [max, entropy, mse]\n  keep_fp: [[], ['/stem/*'], []]\n"
    )
    plan = load_sweep(spec)
    assert len(plan.points) == 12  # 2 x 3 x 3, the repeated keep_fp [] counted once
    assert plan.out == Path("sweeps/s")
    keys = [p.key for p in plan.points]
    assert len(set(keys)) == 12 and keys == [p.key for p in load_sweep(spec, tmp_path / "elsewhere").points]  # out is not in the key
    p = plan.points[0]
    assert p.config.out == Path("sweeps/s/builds") / p.key[:12] and p.config.plan.keep_fp == () and p.config.latency.runs == 5
    assert config_key(p.config) == p.key


@pytest.mark.parametrize(
    "text, match",
    [
        ("grid: {colour: [red]}", "unknown build setting 'colour'"),
        ("grid: {policy: tensorrt}", "non-empty list"),
        ("base: {policy: x}\ngrid: {policy: [y]}", "both in base and in grid"),
        ("grid: [1, 2]", "a sweep is a mapping"),
        ("grid: {policy: [a]}\nextra: 1", "unknown key"),
        ("grid: {gates: [3]}", "gates must be a mapping"),
        (": : :", "not valid YAML"),
    ],
)
def test_bad_sweep_files_are_usage_errors(tmp_path: Path, text: str, match: str) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_sweep(spec)


def _r(key: str, ms: float | None, top1: float | None, status: str = "ok") -> dict:  # type: ignore[type-arg]
    return {"key": key * 12, "params": {"k": key}, "status": status, "p50_ms": ms, "top1": top1, "agreement": 99.0}


def test_pareto_front_keeps_builds_nobody_beats_on_both_axes() -> None:
    rs = [_r("a", 1.0, 80.0), _r("b", 2.0, 90.0), _r("c", 2.5, 85.0), _r("d", 1.0, 79.0), _r("e", 3.0, 90.0), _r("f", None, None, "error")]
    assert pareto(rs, "top1") == {"a" * 12, "b" * 12}
    doc = summary(rs)
    assert doc["counts"] == {"ok": 5, "gate-failed": 0, "error": 1} and doc["axis"] == "top1"
    svg = svg_plot(doc["results"], "top1", pareto(rs, "top1"))
    assert svg.count('class="pareto"') == 2 and svg.count('class="point"') == 3 and "<polyline" in svg
    assert markdown(doc).count("| * |") == 2
    assert accuracy_axis([_r("a", 1.0, None)]) == "agreement"


def test_a_point_records_the_typed_reports_numbers():
    """What a sweep records of a build (or of a build whose gates failed: ``GateFailed.result``) is read from the typed Report."""
    from rescompile.sweep.grid import _metrics
    from rescompile.validate.latency import Latency
    from rescompile.validate.metrics import Accuracy, Agreement, TopK
    from rescompile.validate.results import ModelSection, Report
    from rescompile.validate.run import Measurement

    def lat(role: str, batch: int, p50: float) -> Latency:
        return Latency(f"onnxruntime-{role}", role, batch, 3, 0, p50, p50, p50, p50, p50, p50, batch / p50 * 1000, 1.0)

    m = Measurement(
        source="val",
        samples=10,
        reference="fp32",
        candidate="onnxruntime-int8",
        baseline="onnxruntime-fp32",
        accuracy=Accuracy(TopK(91.0, 99.0), TopK(90.0, 99.0), 1.0),
        agreement=Agreement(97.0, 0.99, 0.9, 0.5, 0.01),
        latency=[lat("baseline", 1, 3.0), lat("candidate", 32, 9.0), lat("candidate", 1, 2.0)],
    )
    assert _metrics(Report(m, ModelSection("demo", (1, 28, 28), 10), None)) == {
        "top1": 90.0,
        "top1_drop": 1.0,
        "agreement": 97.0,
        "cosine_mean": 0.99,
        "p50_ms": 2.0,
        "latency_batch": 1,
    }
