"""Ray faults for real (docs/faults.md): a worker killed mid-task and a node's raylet killed, on a local Ray.

The tasks are rescompile's own, wrapped (test-only, pickled by value) so that one attempt dies at a
known point: its worker process is killed with SIGKILL from this test (``kill -9`` of the pid the
task wrote to a marker file), or kills itself. Ray retries it; the result must be the single
process's, byte for byte, and the report must say which task ran twice and where.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

from rescompile.calibrate import on_ray as ray_calibrate  # noqa: E402
from rescompile.calibrate.collect import CollectSettings  # noqa: E402
from rescompile.calibrate.run import calibrate  # noqa: E402
from rescompile.cli import app  # noqa: E402
from rescompile.config import RaySettings  # noqa: E402
from rescompile.data.sources import open_source  # noqa: E402
from rescompile.errors import UsageError  # noqa: E402
from rescompile.quantize import plan_qdq  # noqa: E402
from rescompile.sweep import grid as sweep  # noqa: E402
from rescompile.validate import on_ray as ray_validate  # noqa: E402
from tests.models import tiny_gray  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the wrappers below travel to the workers by value


def dies_once(fn: Callable[..., Any], marker: Path, *, wait_for_kill: bool = False) -> Callable[..., Any]:
    """``fn``, except that the first attempt to start (of any task) dies: it writes its pid to ``marker`` and then
    waits to be killed (``wait_for_kill``: the test sends SIGKILL) or sends SIGKILL to itself."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return fn(*args, **kwargs)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        if wait_for_kill:
            time.sleep(120)  # killed long before
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    run.__name__ = getattr(fn, "__name__", "task")
    return run


def always_dies(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)

    run.__name__ = getattr(fn, "__name__", "task")
    return run


def kill_when_started(marker: Path) -> threading.Thread:
    """A thread that waits for ``marker`` (a task's pid) and kills that worker with SIGKILL, as ``kill -9`` would."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if marker.is_file() and marker.read_text().strip():
                os.kill(int(marker.read_text()), signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_a_calibration_shard_whose_worker_is_killed_is_retried_to_the_same_bytes(
    local_ray: None, tiny_onnx: onnx.ModelProto, tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    src = open_source(tiny_npz)
    kw: dict[str, Any] = {"collect": CollectSettings(batch_size=8, threads=1, sample=64), "method": "entropy"}
    one = calibrate(tiny_onnx, tensors, src, tiny_gray(), **kw)
    marker = tmp_path / "killed.pid"
    monkeypatch.setattr(ray_calibrate, "collect_shard", dies_once(ray_calibrate.collect_shard, marker, wait_for_kill=True))
    killer = kill_when_started(marker)
    settings = RaySettings(shards=3)
    sharded = calibrate(tiny_onnx, tensors, src, tiny_gray(), ray=settings, **kw)
    killer.join(5)
    assert marker.is_file()  # a worker really was killed mid-shard
    assert sharded.ranges_json == one.ranges_json and sharded.stats_npz == one.stats_npz
    (retried,) = settings.retried
    assert retried["attempts"] == 2 and retried["task"].startswith("calibration shard ") and " of 3 (samples " in retried["task"]
    assert f"worker pid {marker.read_text()})" in retried["nodes"][0] and " (node " in retried["nodes"][0]


def test_validation_and_latency_tasks_are_retried_and_the_report_says_so(
    local_ray: None,
    tiny_onnx: onnx.ModelProto,
    quantize_tiny,  # type: ignore[no-untyped-def]
    tiny_npz: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(tiny_onnx, str(fp32))
    onnx.save(quantize_tiny("tensorrt").model, str(int8))
    common = ["validate", str(int8), "--reference", str(fp32), "--val", str(tiny_npz), "--batch-size", "6", "--latency-batch", "1"]
    common += ["--latency-runs", "3", "-q", "--ray", "--shards", "3"]
    clean = runner.invoke(app, [*common, "--out", str(tmp_path / "clean")])
    assert clean.exit_code == 0, clean.output
    monkeypatch.setattr(ray_validate, "shard_outputs", dies_once(ray_validate.shard_outputs, tmp_path / "shard.pid"))
    monkeypatch.setattr(ray_validate, "_timed", dies_once(ray_validate._timed, tmp_path / "latency.pid"))
    hit = runner.invoke(app, [*common, "--out", str(tmp_path / "hit")])
    assert hit.exit_code == 0, hit.output
    a = json.loads((tmp_path / "clean" / "report.json").read_text())
    b = json.loads((tmp_path / "hit" / "report.json").read_text())
    timed = ("latency", "latency_plan", "speedup_int8_vs_fp32_p50", "memory", "timings_s", "scale")
    assert {k: v for k, v in a.items() if k not in timed} == {k: v for k, v in b.items() if k not in timed}
    assert a["scale"]["retries"] == [] and a["scale"]["max_retries"] == 3
    shard, latency = sorted(b["scale"]["retries"], key=lambda r: r["task"].startswith("latency"))
    assert re.fullmatch(r".+ shard [123] of 3 \(samples \d+:\d+\)", shard["task"]), shard
    assert latency["task"] == "latency of onnxruntime-int8"
    assert all(r["attempts"] == 2 for r in b["scale"]["retries"])
    from rescompile.validate.schema import schema_errors

    assert schema_errors(b) == []


def test_when_retries_run_out_the_shard_node_and_cause_are_one_line(
    local_ray: None, tiny_onnx: onnx.ModelProto, tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx, str(model))
    monkeypatch.setattr(ray_calibrate, "collect_shard", always_dies(ray_calibrate.collect_shard))
    args = ["calibrate", str(model), "--calib", str(tiny_npz), "--batch-size", "8", "-q", "--mean", "0.5", "--std", "0.25"]
    result = runner.invoke(
        app, [*args, "--ray", "--shards", "2", "--out", str(tmp_path / "r.json")], env={"RESCOMPILE_RAY_RETRIES": "1", "COLUMNS": "400"}
    )
    assert result.exit_code == 6, result.output
    line = result.output.splitlines()[0]
    assert line.startswith("error: calibration shard ") and "failed after 2 attempt(s)" in line
    assert "its last attempt ran on " in line and " (node " in line and "WorkerCrashedError" in line
    assert "Traceback" not in result.output and not (tmp_path / "r.json").exists()


def test_an_error_of_the_task_itself_is_not_retried(
    local_ray: None, tiny_onnx: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(0).standard_normal((12, 1, 16, 16)).astype(np.float32)
    x[10, 0, 3, 3] = np.inf
    np.save(tmp_path / "bad.npy", x)
    starts = tmp_path / "starts"
    starts.mkdir()
    real = ray_calibrate.collect_shard

    def counted(*args: Any, **kwargs: Any) -> Any:
        (starts / f"{args[4]}-{os.getpid()}-{time.monotonic_ns()}").touch()  # args[4]: the shard's first sample
        return real(*args, **kwargs)

    monkeypatch.setattr(ray_calibrate, "collect_shard", counted)
    settings = RaySettings(shards=3)
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    with pytest.raises(UsageError, match="NaN or Inf"):
        calibrate(tiny_onnx, tensors, open_source(tmp_path / "bad.npy"), tiny_gray(), collect=CollectSettings(batch_size=4), ray=settings)
    assert len(list(starts.glob("8-*"))) == 1 and settings.retried == []  # the shard holding the Inf (samples 8:12) ran once


def test_a_sweep_point_whose_worker_dies_runs_again_and_one_that_keeps_dying_keeps_the_others(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from rescompile.models.resnet_cifar import cifar_resnet

    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    torch.manual_seed(0)
    torch.save(cifar_resnet("resnet20", 4, 1).state_dict(), tmp_path / "weights.pt")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"base: {{model: resnet20, in_channels: 1, input_size: 16, num_classes: 4, calib: {data}, val: {data}, latency_runs: 3,\n"
        f"        weights: {tmp_path / 'weights.pt'}, latency_batches: [1], threads: 1, batch_size: 4}}\n"
        "grid:\n  policy: [onnxruntime, tensorrt]\n"
    )
    real = sweep.run_point

    def tensorrt_dies(point: Any) -> Any:  # the tensorrt point's worker dies every time; the onnxruntime one's once
        marker = tmp_path / f"{point.params['policy']}.pid"
        if point.params["policy"] == "tensorrt" or not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(point)

    monkeypatch.setattr(sweep, "run_point", tensorrt_dies)
    out = tmp_path / "sw"
    first = runner.invoke(app, ["sweep", str(spec), "--out", str(out)], env={"COLUMNS": "400", "RESCOMPILE_RAY_RETRIES": "1"})
    assert first.exit_code == 1, first.output
    results = {r["params"]["policy"]: r for r in json.loads((out / "sweep.json").read_text())["results"]}
    assert results["onnxruntime"]["status"] == "ok" and results["onnxruntime"]["attempts"] == 2
    lost = results["tensorrt"]
    assert lost["status"] == "error" and lost["exit_code"] == 6 and lost["attempts"] == 2
    assert (
        lost["error"].startswith("sweep point ") and "failed after 2 attempt(s)" in lost["error"] and "WorkerCrashedError" in lost["error"]
    )
    assert not list(out.glob("builds/.*partial*"))  # the killed attempt's staging folder was cleaned by the retry
    monkeypatch.setattr(sweep, "run_point", real)  # the link is back: the rerun builds only the lost point
    again = runner.invoke(app, ["sweep", str(spec), "--out", str(out)], env={"COLUMNS": "400"})
    results = {r["params"]["policy"]: r for r in json.loads((out / "sweep.json").read_text())["results"]}
    assert results["onnxruntime"]["skipped"] is True and results["tensorrt"]["skipped"] is False
    assert results["tensorrt"]["status"] in ("ok", "gate-failed") and results["tensorrt"]["attempts"] == 1, again.output


def _raylet_of(node_ip_port: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"raylet") and f"--node_manager_port={node_ip_port}".encode() in cmd:
            return int(proc.name)
    return None


def _processes_of(tag: str) -> list[int]:
    """Processes whose command line holds ``tag`` (the cluster's own temp dir: every Ray process of it names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(entry.name) != os.getpid() and tag.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.fixture()
def two_node_cluster() -> Iterator[dict[str, Any]]:
    """A head with no CPU (the driver's) and two worker nodes of 1 CPU each, all on 127.0.0.1, started with ``ray start``.

    Stopped by killing the processes that name its own temp dir (never ``ray stop``, which would stop every Ray here).
    """
    import shutil
    import tempfile

    from sshd import free_port

    if ray.is_initialized():
        ray.shutdown()
    before = os.environ.get("RAY_AUTH_MODE")
    temp = tempfile.mkdtemp(prefix="rf-", dir="/tmp")  # short: Ray's socket paths live under it (a Unix socket path is <= 107 bytes)
    port = free_port()
    env = {
        **os.environ,
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_timeout_ms": "500",
        "RAY_health_check_failure_threshold": "4",
        "RAY_USAGE_STATS_ENABLED": "0",
        # no token: ~/.ray/auth_token is shared with any other Ray started on this machine meanwhile (a loopback-only cluster)
        "RAY_AUTH_MODE": "disabled",
    }
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}"]
    ports: list[int] = []
    try:
        started = subprocess.run(
            [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", *common],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        for _ in range(2):
            ports.append(free_port())
            started = subprocess.run(
                [ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--node-manager-port={ports[-1]}", *common],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        before = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        yield {"node_manager_ports": ports}
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before
        for _ in range(3):
            for pid in _processes_of(temp):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)


def kills_its_raylet_once(fn: Callable[..., Any], marker: Path, spare: str) -> Callable[..., Any]:
    """``fn``, except that the first attempt on a node other than ``spare`` (the driver's: the driver may attach to any
    raylet of this machine, and losing its own would lose the owner of every object) kills its node's raylet (SIGKILL)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        import ray

        if ray.get_runtime_context().get_node_id() == spare:
            return fn(*args, **kwargs)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return fn(*args, **kwargs)
        os.write(fd, str(os.getppid()).encode())  # a worker is the child of its node's raylet
        os.close(fd)
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(120)
        raise AssertionError("unreachable")

    run.__name__ = getattr(fn, "__name__", "task")
    return run


@pytest.mark.skipif(
    not os.environ.get("RESCOMPILE_TEST_NODE_LOSS"),
    reason="flaky on one machine (docs/faults.md): passed once; twice the retried shard then failed with OwnerDiedError for "
    "the driver's own ray.put object. Run with RESCOMPILE_TEST_NODE_LOSS=1",
)
def test_a_lost_node_is_a_retried_shard_on_the_node_that_is_left(
    two_node_cluster: dict[str, Any], tiny_onnx: onnx.ModelProto, tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = plan_qdq(tiny_onnx, "onnxruntime").calibrated_tensors
    src = open_source(tiny_npz)
    kw: dict[str, Any] = {"collect": CollectSettings(batch_size=8, threads=1, sample=64), "method": "max"}
    one = calibrate(tiny_onnx, tensors, src, tiny_gray(), **kw)
    marker = tmp_path / "raylet.pid"
    driver = ray.get_runtime_context().get_node_id()
    monkeypatch.setattr(ray_calibrate, "collect_shard", kills_its_raylet_once(ray_calibrate.collect_shard, marker, driver))
    settings = RaySettings(shards=2, address="auto")
    sharded = calibrate(tiny_onnx, tensors, src, tiny_gray(), ray=settings, **kw)
    raylet = int(marker.read_text())
    assert raylet in [_raylet_of(p) for p in two_node_cluster["node_manager_ports"]] or not Path(f"/proc/{raylet}").exists()
    assert sharded.ranges_json == one.ranges_json and sharded.stats_npz == one.stats_npz
    (retried,) = settings.retried
    assert retried["attempts"] == 2 and retried["nodes"][0].split(" (node ")[1][:12] != retried["nodes"][1].split(" (node ")[1][:12]
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2  # the head and the node that is left
