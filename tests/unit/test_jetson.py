"""Installing on and measuring a Jetson (issue 20 items 4-5; review D7, D12, D13, D14, D16, D18), without one.

The probes read files and commands a Jetson has; here they are pointed at temporary files and at
command outputs written in the formats those tools print (``NV Power Mode: MAXN``,
``GPU MinFreq=... MaxFreq=... CurrentFreq=...``), so each branch is exercised.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.deploy.device import DeployOptions, engine_options
from rescompile.engine.jetson import PowerState, gpu_devfreq_hz, module_model, parse_jetson_clocks, parse_nvpmodel, power_state
from rescompile.engine.sidecar import DeviceInfo, compatibility_problems, make_sidecar
from rescompile.errors import JETSON_TENSORRT_HINT, install_hint

REPO = Path(__file__).parents[2]
CLOCKS_LOCKED = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
NV Power Mode: MAXN
"""
CLOCKS_FREE = CLOCKS_LOCKED.replace("GPU MinFreq=1300500000", "GPU MinFreq=306000000").replace(
    "CurrentFreq=1300500000", "CurrentFreq=306000000"
)


@pytest.fixture()
def tegra(tmp_path: Path) -> Path:
    path = tmp_path / "nv_tegra_release"
    path.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    return path


# D7: install hints on a Jetson.


def test_the_tensorrt_hint_on_a_jetson_is_apt_and_a_system_site_packages_venv(tegra: Path, tmp_path: Path) -> None:
    hint = install_hint("tensorrt", "tensorrt", str(tegra))
    assert hint == JETSON_TENSORRT_HINT and "apt install python3-libnvinfer" in hint and "--system-site-packages" in hint
    assert "pip install" not in hint
    assert install_hint("tensorrt", "tensorrt", str(tmp_path / "absent")) == "pip install 'rescompile[tensorrt]'"
    assert install_hint("onnxsim", "export", str(tegra)) == "pip install 'rescompile[export]'"


def test_docs_and_readme_say_the_same() -> None:
    deploy = (REPO / "docs" / "deploy.md").read_text()
    readme = (REPO / "README.md").read_text()
    for text in (deploy, readme):
        assert "python3-libnvinfer" in text and "--system-site-packages" in text


# D16: AGX, NX and Nano told apart.


def test_module_model_reads_the_device_tree(tmp_path: Path) -> None:
    path = tmp_path / "model"
    path.write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    assert module_model(path) == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert module_model(tmp_path / "absent") is None


def test_a_plan_from_another_orin_module_is_refused() -> None:
    agx = DeviceInfo("Orin", (8, 7), "36.4.0", 16, "NVIDIA Jetson AGX Orin Developer Kit")
    nano = DeviceInfo("Orin", (8, 7), "36.4.0", 8, "NVIDIA Jetson Orin Nano Developer Kit")
    side = make_sidecar(
        tensorrt_version="10.3.0", device=agx, settings={}, onnx_sha256="a", plan_sha256="b", timing_cache=None, fusion=None
    )
    assert side["gpu"]["sm_count"] == 16 and side["gpu"]["module"].startswith("NVIDIA Jetson AGX")
    problems = compatibility_problems(side, "10.3.0", nano)
    assert any("16 SMs" in p for p in problems) and any("Orin Nano" in p for p in problems)
    assert compatibility_problems(side, "10.3.0", agx) == []
    old = {**side, "gpu": {"name": "Orin", "compute_capability": [8, 7], "l4t": "36.4.0"}}  # a sidecar from before
    assert compatibility_problems(old, "10.3.0", nano) == []


# D14: power mode, clocks and the GPU clock.


def test_nvpmodel_and_jetson_clocks_outputs_are_parsed() -> None:
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN" and parse_nvpmodel("NV Power Mode: 15W\n2") == "15W"
    assert parse_nvpmodel("nvpmodel: command not found") is None
    assert parse_jetson_clocks(CLOCKS_LOCKED) == (1300500000, 1300500000, 1300500000)
    assert parse_jetson_clocks("cpu0: Online=1") is None


def _runner(outputs: dict[str, str | None]):  # type: ignore[no-untyped-def]
    return lambda cmd: outputs.get(cmd[0])


def test_maxn_and_locked_clocks_give_no_warning(tegra: Path) -> None:
    state = power_state(_runner({"nvpmodel": "NV Power Mode: MAXN\n0", "jetson_clocks": CLOCKS_LOCKED}), tegra)
    assert state is not None and state.mode == "MAXN" and state.clocks_locked and state.gpu_cur_hz == 1300500000
    assert state.warnings() == [] and state.to_dict()["raw"]["nvpmodel -q"].startswith("NV Power Mode")


def test_a_low_power_mode_and_free_clocks_warn(tegra: Path) -> None:
    state = power_state(_runner({"nvpmodel": "NV Power Mode: 15W\n2", "jetson_clocks": CLOCKS_FREE}), tegra)
    assert state is not None and state.clocks_locked is False
    text = " ".join(state.warnings())
    assert "15W, not MAXN" in text and "not locked" in text and "sudo jetson_clocks" in text


def test_without_the_tools_the_devfreq_clock_is_read_and_the_gap_is_warned(tegra: Path, tmp_path: Path) -> None:
    node = tmp_path / "devfreq" / "17000000.gpu"
    node.mkdir(parents=True)
    (node / "cur_freq").write_text("918000000\n")
    assert gpu_devfreq_hz(tmp_path / "devfreq") == 918000000
    state = power_state(_runner({}), tegra, tmp_path / "devfreq")
    assert state == PowerState(None, None, None, 918000000, None, {})
    assert "could not be read" in state.warnings()[0]


def test_not_a_jetson_records_nothing(tmp_path: Path) -> None:
    assert power_state(_runner({"nvpmodel": "NV Power Mode: MAXN"}), tmp_path / "absent") is None


def test_doctor_has_a_jetson_power_row() -> None:
    from rescompile.commands.doctor import collect

    rows = {item: (ok, detail) for item, ok, detail in collect()}
    assert "Jetson power" in rows
    if not Path("/etc/nv_tegra_release").exists():
        assert rows["Jetson power"] == (False, "not a Jetson (no /etc/nv_tegra_release)")


# D18: deploy tunes for the batch it runs.


def test_deploy_profile_opt_is_the_batch_it_validates() -> None:
    gpu = engine_options(DeployOptions(batch=32))
    assert gpu.batches == (1, 32) and gpu.opt_batch == 32 and gpu.rest_precision is None
    dla = engine_options(DeployOptions(batch=32, dla_core=0, rest_precision="fp16"))
    assert dla.batches == (1,) and dla.opt_batch == 1 and dla.dla_core == 0 and dla.rest_precision == "fp16"


def test_dockerfiles_pin_cuda_python_to_the_cuda_major_and_numpy_below_2_on_r36() -> None:
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    jetson = (REPO / "docker" / "Dockerfile.jetson").read_text()
    assert 'ARG CUDA_PYTHON="cuda-python>=12,<13"' in gpu and 'pip install --no-cache-dir -e . "${CUDA_PYTHON}"' in gpu
    assert '"numpy>=1.24,<2"' in jetson and '"cuda-python>=12.6,<13"' in jetson


# D13: gpu_smoke.sh from a bundle, inside the Jetson image.


def test_gpu_smoke_runs_from_a_bundle_without_the_cpu_build() -> None:
    script = (REPO / "benchmarks" / "gpu_smoke.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_smoke.sh")], check=False).returncode == 0
    branch = script[script.index('if [ -n "${BUNDLE:-}" ]; then') : script.index("elif [ -z")]
    assert "open_bundle" in branch and "cli build" not in branch
    for needed in ("nvpmodel", "power_state", "smoke.json", "--dla-core", "cli deploy", "cudaGetDeviceCount", "enable_graph"):
        assert needed in script, needed
    jetson = (REPO / "docker" / "Dockerfile.jetson").read_text()
    assert "COPY benchmarks/gpu_smoke.sh" in jetson and "BUNDLE=" in jetson


# D12: engine --adopt.


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_adopt_without_tensorrt_is_exit_3_with_a_message(tiny_int8_path: Path, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan: TensorRT is needed to read one")
    result = CliRunner().invoke(app, ["engine", str(tiny_int8_path), "--target", "jetson-orin-nx", "--adopt", str(plan)])
    assert result.exit_code == 3 and "--adopt reads the plan with TensorRT" in " ".join(str(result.output).split() + [str(result.stderr)])
    assert not (tmp_path / "model.plan.json").exists()


def test_adopt_of_a_missing_plan_is_exit_2(tiny_int8_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["engine", str(tiny_int8_path), "--adopt", str(tmp_path / "nope.plan")])
    assert result.exit_code == 2 and "no such plan" in " ".join((result.output + str(result.stderr)).split())


def test_a_tensorrt_latency_report_carries_the_power_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    import rescompile.engine.jetson as jetson
    from rescompile.validate.notes import power_notes

    slow = PowerState("15W", 306000000, 1300500000, 306000000, False, {})
    monkeypatch.setattr(jetson, "power_state", lambda: slow)
    notes = power_notes("tensorrt-int8")
    assert len(notes) == 2 and "15W" in notes[0] and "not locked" in notes[1]
    assert power_notes("onnxruntime-int8") == []  # CPU candidates: no Jetson power note
    monkeypatch.setattr(jetson, "power_state", lambda: None)
    assert power_notes("tensorrt-int8") == []
