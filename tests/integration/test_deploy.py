"""``rescompile bundle`` and ``rescompile deploy`` on this machine (the CPU flow), end to end through the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.deploy.bundle import MANIFEST, MEMBERS, open_bundle

runner = CliRunner()
REPO = Path(__file__).parents[2]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
# A sitecustomize that makes ``import torch`` / ``import onnxsim`` fail, as on a Jetson image without them.
BLOCKER = """import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the device-side path must not import it")
        return None
sys.meta_path.insert(0, _Block())
"""


def _copy_build(src: Path, dst: Path, **manifest_changes: object) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    doc.update(manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def test_bundle_is_deterministic_and_holds_everything(small_demo_build: Path, demo_bundle: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.rcb"
    result = runner.invoke(app, ["bundle", str(small_demo_build), "-o", str(again), "--reference-size", "64", "--min-agreement", "90"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == demo_bundle.read_bytes()
    with tarfile.open(demo_bundle) as tar:
        assert tar.getnames() == [MANIFEST, *MEMBERS]
    bundle = open_bundle(demo_bundle, tmp_path / "open")
    doc = bundle.manifest
    assert doc["model"]["name"] == "demo" and doc["model"]["residual_adds"] == 9 and doc["policy"] == "tensorrt"
    assert doc["gates"]["min_agreement"] == 90
    assert doc["reference"]["samples"] == 64 and doc["reference"]["labelled"] is True
    assert bundle.file("model.int8.onnx").read_bytes() == (small_demo_build / "model.int8.onnx").read_bytes()
    assert bundle.file("ranges.json").read_bytes() == (small_demo_build / "ranges.json").read_bytes()
    assert bundle.file("calib.cache").read_text().startswith("TRT-100300-EntropyCalibration2\n")
    assert len(json.loads(bundle.file("blocks.json").read_text())["residual_blocks"]) == 9
    ref = bundle.reference()
    assert ref.inputs.shape == (64, 1, 28, 28) and ref.logits.shape == (64, 10) and ref.labels is not None
    # the bundled logits are the FP32 model's on the bundled inputs
    import onnxruntime as ort

    sess = ort.InferenceSession(str(small_demo_build / "model.simplified.onnx"), providers=["CPUExecutionProvider"])
    assert doc["reference"]["dtype"] == "float16"  # stored as float16: the logits are the FP32 model's on those values
    fp32 = sess.run(None, {sess.get_inputs()[0].name: ref.inputs})[0]
    np.testing.assert_allclose(ref.logits, fp32, rtol=1e-4, atol=1e-4)


def test_bundle_refuses_failed_onnxruntime_policy_and_changed_builds(small_demo_build: Path, tmp_path: Path) -> None:
    ort_build = _copy_build(small_demo_build, tmp_path / "ort", policy="onnxruntime")
    result = runner.invoke(app, ["bundle", str(ort_build), "-o", str(tmp_path / "a.rcb")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "'onnxruntime' placement policy" in said and "--policy tensorrt" in said
    failed = _copy_build(small_demo_build, tmp_path / "failed", gates={"passed": False, "failed": ["min-agreement"]})
    result = runner.invoke(app, ["bundle", str(failed), "-o", str(tmp_path / "b.rcb"), "--reference-size", "8"])
    assert result.exit_code == 2 and "gates failed (min-agreement)" in result.output
    result = runner.invoke(app, ["bundle", str(failed), "-o", str(tmp_path / "b.rcb"), "--reference-size", "8", "--allow-failed-build"])
    assert result.exit_code == 0, result.output
    assert open_bundle(tmp_path / "b.rcb", tmp_path / "b").manifest["build"]["overrides"] == ["--allow-failed-build"]
    changed = _copy_build(small_demo_build, tmp_path / "changed")
    data = bytearray((changed / "model.int8.onnx").read_bytes())
    data[-10] ^= 1
    (changed / "model.int8.onnx").write_bytes(bytes(data))
    result = runner.invoke(app, ["bundle", str(changed), "-o", str(tmp_path / "c.rcb")])
    assert result.exit_code == 2 and "does not match manifest.json" in result.output
    assert not (tmp_path / "a.rcb").exists() and not (tmp_path / "c.rcb").exists()


def test_deploy_cpu_flow_passes_and_writes_reports(demo_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "dep"
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--backend", "onnxruntime", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "deploy.json").read_text())
    assert report["passed"] is True and report["samples"] == 64 and report["candidate"] == "onnxruntime-int8"
    assert [g["name"] for g in report["gates"]] == ["min-agreement"] and report["agreement"]["top1"] >= 90
    assert report["bundle"]["sha256"] == open_bundle(demo_bundle, tmp_path / "o").sha256
    assert {"deploy.md", "junit.xml", "model.int8.onnx.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "model.int8.onnx.json").read_text())["onnx_sha256_checked"] is True


def test_deploy_exits_1_when_a_bundled_gate_fails(small_demo_build: Path, tmp_path: Path) -> None:
    strict = tmp_path / "strict.rcb"
    result = runner.invoke(app, ["bundle", str(small_demo_build), "-o", str(strict), "--reference-size", "32", "--min-cosine", "1.0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["deploy", str(strict), "--backend", "onnxruntime", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1, result.output
    assert "FAIL min-cosine" in result.output
    assert json.loads((tmp_path / "d" / "deploy.json").read_text())["passed"] is False
    assert 'failures="1"' in (tmp_path / "d" / "junit.xml").read_text()


def test_deploy_refuses_a_tampered_bundle(demo_bundle: Path, tmp_path: Path) -> None:
    data = bytearray(demo_bundle.read_bytes())
    data[data.index(b"onnx") + 3000] ^= 0xFF  # inside model.int8.onnx's bytes
    bad = tmp_path / "bad.rcb"
    bad.write_bytes(bytes(data))
    result = runner.invoke(app, ["deploy", str(bad), "--backend", "onnxruntime", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "does not match its sha256" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_deploy_without_tensorrt_exits_3(demo_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--out", str(tmp_path / "d")])
    assert result.exit_code == 3
    said = " ".join(result.output.split())
    assert "TensorRT is not available on this machine" in said and "--backend onnxruntime" in said


def test_device_side_needs_neither_torch_nor_onnxsim(demo_bundle: Path, tmp_path: Path) -> None:
    env = _blocked_env(tmp_path / "blocker", ("torch", "onnxsim", "torchvision"))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works
    cmd = [
        sys.executable,
        "-c",
        "from rescompile.cli import main; main()",
        "deploy",
        str(demo_bundle),
        "--backend",
        "onnxruntime",
        "--out",
        str(tmp_path / "d"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "d" / "deploy.json").read_text())["passed"] is True
    # --backend tensorrt on a Jetson-like image: no torch, no onnxsim, no ONNX Runtime either.
    jetson_env = _blocked_env(tmp_path / "blocker2", ("torch", "onnxsim", "torchvision", "onnxruntime"))
    no_trt = subprocess.run(
        cmd[:-4] + ["--out", str(tmp_path / "e")], env=jetson_env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert no_trt.returncode == (0 if HAS_TENSORRT else 3), no_trt.stdout + no_trt.stderr
    assert HAS_TENSORRT or "TensorRT is not available" in " ".join(no_trt.stderr.split())


def _blocked_env(folder: Path, blocked: tuple[str, ...]) -> dict[str, str]:
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(f"BLOCKED = {blocked!r}\n" + BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--dla-core", "0"], "--dla-core needs a named Jetson target"),
        (["--dla-core", "0", "--backend", "onnxruntime"], "--dla-core needs --backend tensorrt"),
        (["--backend", "cuda"], "unknown backend 'cuda'"),
        (["--host", "h1", "--hosts", "fleet.yaml"], "give --host or --hosts, not both"),
        (["--cuda-lib", "cupy"], "--cuda-lib 'cupy': expected one of auto, cuda-python, pycuda, torch"),
    ],
)
def test_deploy_usage_errors_exit_2_before_any_work(demo_bundle: Path, tmp_path: Path, extra: list[str], said: str) -> None:
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--out", str(tmp_path / "d"), *extra])
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
    assert not (tmp_path / "d").exists()
