"""Build folders end to end: deterministic, checked against their manifest by every reader, published safely."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.buildfolder import ARTIFACTS, INT8_ONNX, MANIFEST, REPORT_JSON, SIMPLIFIED_ONNX
from rescompile.cli import app
from rescompile.io import sha256_file
from rescompile.publish import clean_leftovers
from rescompile.validate.schema import schema_errors
from tests.builds import DEMO_SMALL, LATENCY_RUNS, DemoBuild, copy_build

runner = CliRunner()
REPO = Path(__file__).parents[2]
VALIDATE = ["-q", "--val-size", "50", *LATENCY_RUNS, "--latency-batch", "1", "--no-baseline"]
# What a run measures rather than computes: excluded from the byte-identity of two builds.
MEASURED_REPORT = ("latency", "latency_plan", "speedup_int8_vs_fp32_p50", "memory", "timings_s")


@pytest.fixture()
def first(small_demo_build: Path) -> Path:
    """The session's demo build (tests/conftest.py): copy it before changing it."""
    return small_demo_build


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output  # stdout and stderr, interleaved


def one_line_error(text: str) -> str:
    assert "Traceback" not in text and "internal error" not in text, text
    (line,) = [x for x in text.splitlines() if x.startswith("error:")]
    return line


def test_two_builds_are_byte_identical_but_for_measured_times(demo_build: DemoBuild):
    first, out = demo_build.folder, demo_build.out  # the same --out as the first build: the recorded config is the same too
    code, text = cli("build", *demo_build.args)
    assert code == 0, text
    from rescompile.report.html import render_html
    from rescompile.report.junit import render_junit
    from rescompile.report.markdown import render_markdown
    from rescompile.report.write import fallback_layers, read_block_picture, recorded_build
    from rescompile.validate.results import Report

    a, b = json.loads((first / REPORT_JSON).read_text()), json.loads((out / REPORT_JSON).read_text())
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= set(MEASURED_REPORT)
    b.update({k: a[k] for k in MEASURED_REPORT})  # b with a's times renders a's exact bytes
    typed = Report.from_dict(b)  # read back typed: the same document, and the renderers' input
    assert typed.to_dict() == b
    rendered = {
        "report.json": json.dumps(typed.to_dict(), indent=2, sort_keys=True, default=str) + "\n",
        "report.md": render_markdown(typed),
        "junit.xml": render_junit(typed.measurement, typed.gates, model=typed.model.name, validation=typed.validation),
        "report.html": render_html(typed, read_block_picture(first, recorded=recorded_build(typed), fallback=fallback_layers(typed))),
    }
    for name in ARTIFACTS:
        if name in rendered:
            assert rendered[name].encode() == (first / name).read_bytes(), name
        else:
            assert (out / name).read_bytes() == (first / name).read_bytes(), name
    ma, mb = json.loads((first / MANIFEST).read_text()), json.loads((out / MANIFEST).read_text())
    for m in (ma, mb):
        del m["timings_s"]
        for name in rendered:  # their bytes hold the times; each hash is checked against its own file below
            del m["artifacts"][name]
    assert ma == mb
    for name in rendered:
        assert json.loads((out / MANIFEST).read_text())["artifacts"][name]["sha256"] == sha256_file(out / name)


def test_validate_refuses_a_flipped_byte(first: Path, tmp_path: Path):
    build = copy_build(first, tmp_path / "flip")
    data = bytearray((build / INT8_ONNX).read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: still a loadable ONNX model, silently different
    (build / INT8_ONNX).write_bytes(bytes(data))
    for args in (
        ["validate", str(build), *VALIDATE, "--out", str(tmp_path / "v")],
        ["validate", str(build / INT8_ONNX), "--reference", "demo", *VALIDATE, "--out", str(tmp_path / "v")],
        ["inspect", str(build)],
        ["engine", str(build), "--target", "jetson-orin-nx"],
        ["engine", str(build / INT8_ONNX)],
    ):
        code, text = cli(*args)
        assert code == 2, (args, text)
        assert f"{build / INT8_ONNX} does not match manifest.json: sha256" in one_line_error(text)
    assert not (tmp_path / "v").exists()


def test_stage_commands_check_a_build_folders_files(first: Path, tmp_path: Path):
    """simplify, calibrate and quantize read a build folder's files only as the build wrote them."""
    from rescompile.buildfolder import CALIB_STATS, RANGES, SIMPLIFIED_ONNX

    build = copy_build(first, tmp_path / "flip")
    for name in (SIMPLIFIED_ONNX, CALIB_STATS, RANGES):
        data = bytearray((build / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (build / name).write_bytes(bytes(data))
    out = tmp_path / "o"
    for name, args in (
        (SIMPLIFIED_ONNX, ["simplify", str(build / SIMPLIFIED_ONNX), "--out", str(out)]),
        (SIMPLIFIED_ONNX, ["calibrate", str(build / SIMPLIFIED_ONNX), "--calib", "demo-calib", "-q", "--out", str(out)]),
        (CALIB_STATS, ["calibrate", str(first / SIMPLIFIED_ONNX), "--from-stats", str(build / CALIB_STATS), "--out", str(out)]),
        (SIMPLIFIED_ONNX, ["quantize", str(build / SIMPLIFIED_ONNX), "--ranges", str(first / RANGES), "--out", str(out)]),
        (RANGES, ["quantize", str(first / SIMPLIFIED_ONNX), "--ranges", str(build / RANGES), "--out", str(out)]),
    ):
        code, text = cli(*args)
        assert code == 2, (args, text)
        assert f"{build / name} does not match manifest.json: sha256" in one_line_error(text)
        assert not out.exists()
    # the files of an intact build are read as before; --no-verify-hashes reads an edited one, with a warning
    code, text = cli("quantize", str(first / SIMPLIFIED_ONNX), "--ranges", str(first / RANGES), "--out", str(out))
    assert code == 0 and out.is_file(), text
    import onnx

    edited = copy_build(first, tmp_path / "edited")
    model = onnx.load(edited / SIMPLIFIED_ONNX)
    model.doc_string = "edited by hand"  # still a valid model, no longer the build's bytes
    onnx.save(model, edited / SIMPLIFIED_ONNX)
    args = ["simplify", str(edited / SIMPLIFIED_ONNX), "--out", str(tmp_path / "s.onnx")]
    code, text = cli(*args)
    assert code == 2 and "does not match manifest.json" in one_line_error(text)
    code, text = cli(*args, "--no-verify-hashes")
    assert code == 0 and "without checking their sha256" in text and (tmp_path / "s.onnx").is_file(), text


def test_validate_refuses_an_fp32_model_in_place_of_the_int8_one(first: Path, tmp_path: Path):
    build = copy_build(first, tmp_path / "fp32")
    shutil.copyfile(build / SIMPLIFIED_ONNX, build / INT8_ONNX)
    code, text = cli("validate", str(build), *VALIDATE, "--out", str(tmp_path / "v"))
    assert code == 2 and "model.int8.onnx does not match manifest.json" in one_line_error(text)
    # The documented override for a model edited by hand: a warning, and the report says so.
    code, text = cli("validate", str(build), *VALIDATE, "--out", str(tmp_path / "v"), "--no-verify-hashes")
    assert code == 0, text
    assert "warning: --no-verify-hashes" in text
    report = json.loads((tmp_path / "v" / REPORT_JSON).read_text())
    assert report["build"] == {"folder": str(build), "hashes_verified": False, "gates_passed": True, "overrides": ["--no-verify-hashes"]}
    assert any("--no-verify-hashes" in n for n in report["notes"]) and schema_errors(report) == []
    assert "--no-verify-hashes" in (tmp_path / "v" / "report.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"schema": "rescompile.manifest/1", "artif', "is damaged: not valid JSON"), ("[1, 2]", "a JSON object expected, found an array")],
)
def test_damaged_manifest_is_exit_2_in_one_line(first: Path, tmp_path: Path, content: str, message: str):
    build = copy_build(first, tmp_path / "b")
    (build / MANIFEST).write_text(content)
    v = ["--out", str(tmp_path / "v")]
    for args in (
        ["validate", str(build), *VALIDATE, *v],
        ["inspect", str(build)],
        ["engine", str(build)],
        ["compare", str(first), str(build)],
        ["validate", str(build / INT8_ONNX), "--reference", "demo", *v],
    ):
        code, text = cli(*args)
        assert code == 2, (args, text)
        line = one_line_error(text)
        assert str(build / MANIFEST) in line and message in line


def test_failed_gate_is_published_beside_the_passing_build(first: Path, tmp_path: Path):
    out = copy_build(first, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, text = cli("build", "--out", str(out), *DEMO_SMALL, "--min-cosine", "1.0")
    assert code == 1
    assert "agreement.cosine_mean" in text and f"{out}.failed/" in text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the passing build is untouched
    failed = tmp_path / "b.failed"
    report = json.loads((failed / REPORT_JSON).read_text())
    assert report["passed"] is False and report["gates"][0]["passed"] is False
    assert 'failures="1"' in (failed / "junit.xml").read_text() and (failed / INT8_ONNX).is_file()
    assert json.loads((failed / MANIFEST).read_text())["gates"] == {"passed": False, "failed": ["min-cosine"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.failed"]  # no staging folder left

    # Downstream commands refuse the failed build unless told otherwise; comparing and inspecting it is fine.
    for args in (
        ["validate", str(failed), *VALIDATE, "--out", str(tmp_path / "v")],
        ["engine", str(failed)],
        ["engine", str(failed / INT8_ONNX)],
    ):
        code, text = cli(*args)
        assert code == 2 and "is a build whose gates failed (min-cosine); refusing to use it" in one_line_error(text)
    code, text = cli("validate", str(failed), *VALIDATE, "--out", str(tmp_path / "v"), "--allow-failed-build")
    assert code == 0 and "warning: --allow-failed-build" in text, text
    assert json.loads((tmp_path / "v" / REPORT_JSON).read_text())["build"]["overrides"] == ["--allow-failed-build"]
    code, text = cli("compare", str(out), str(failed), "--ignore-latency")  # what CI runs after a failure
    assert code == 1 and "gate.min-cosine: None -> 0.99" in text and "Traceback" not in text, text
    code, text = cli("inspect", str(failed))
    assert code == 0 and "gates failed (min-cosine)" in text, text


def test_out_that_cannot_be_published_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "afile").write_text("x")
    code, text = cli("build", "--out", str(tmp_path / "afile" / "b"), *DEMO_SMALL)
    assert code == 2 and "afile is a file, not a folder" in one_line_error(text)
    monkeypatch.chdir(tmp_path)
    code, text = cli("build", "--out", ".", *DEMO_SMALL)
    assert code == 2 and "is the current folder or holds it" in one_line_error(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def build_process(out: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", "from rescompile.cli import main; main()", "build", "--out", str(out), *DEMO_SMALL]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )


def wait_for_stage(proc: subprocess.Popen[str], folder: Path, name: str) -> Path:
    """The build's staging folder, once it holds the exported model (the build is under way)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        stages = [p for p in folder.glob(f".{name}.partial-{proc.pid}-*") if (p / "model.fp32.onnx").is_file()]
        if stages:
            return stages[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the build never exported its model: {proc.communicate()}")


def test_sigterm_mid_build_removes_the_stage_and_keeps_the_build(first: Path, tmp_path: Path):
    out = copy_build(first, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = build_process(out)
    wait_for_stage(proc, tmp_path, "b")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as shells report it
    assert "terminated" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no .partial / .old folder left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_leftovers_of_a_killed_build_are_cleaned_by_the_next(first: Path, tmp_path: Path):
    out = copy_build(first, tmp_path / "b")
    proc = build_process(out)
    stage = wait_for_stage(proc, tmp_path, "b")
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate(timeout=60)
    assert stage.is_dir() and f".partial-{proc.pid}-" in stage.name
    assert clean_leftovers(out) == [stage]  # what the next build into b does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert sha256_file(out / INT8_ONNX) == sha256_file(first / INT8_ONNX)
