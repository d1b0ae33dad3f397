"""SSH faults for real (docs/faults.md): the session's server process killed mid-transfer and mid-run.

Real OpenSSH servers on 127.0.0.1 (tests/sshd.py). Dropping a link is killing the per-connection
``sshd`` processes of one server (the listener stays, so the rerun can connect again). The copy is
slowed to a known pace with scp's own bandwidth limit (``scp -l``, through a test-only ``scp``
first on PATH), so the test can cut it while it is under way.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from tests.sshd import SSHD, SshLab, start_lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SSHD is None, reason="OpenSSH server (sshd) not installed: apt-get install openssh-server"),
]
runner = CliRunner()
REPO = Path(__file__).parents[2]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): a listening sshd's per-connection processes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def drop_link(lab: SshLab, alias: str) -> int:
    """Kill (SIGKILL) the session processes of ``alias``'s server: its link drops; returns how many were killed."""
    server = next(s for s in lab.servers if s.alias == alias)
    assert server.proc is not None
    killed = 0
    for pid in descendants(server.proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def when(condition: Callable[[], bool], then: Callable[[], None]) -> tuple[threading.Thread, list[bool]]:
    """A thread that runs ``then`` once ``condition`` holds (within 120 s); the list says whether it did."""
    fired: list[bool] = []

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if condition():
                then()
                fired.append(True)
                return
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, fired


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    lab = start_lab(tmp_path_factory.mktemp("ssh-faults"), ["h1", "h2", "h3"])
    try:
        yield lab
    finally:
        lab.stop()


def _wrapper(path: Path, marker: Path | None = None) -> str:
    """The device's ``rescompile``: this interpreter and checkout; with ``marker``, it first touches it (the run began)."""
    touch = f"touch {marker}\n" if marker is not None else ""
    path.write_text(f'#!/bin/sh\n{touch}PYTHONPATH={REPO} exec {sys.executable} -c "from rescompile.cli import main; main()" "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture()
def slow_scp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``scp`` limited to 800 Kbit/s (scp -l): copying the demo bundle takes seconds, long enough to cut it."""
    import shutil

    real = shutil.which("scp")
    assert real is not None
    shim = tmp_path / "slowbin"
    shim.mkdir()
    (shim / "scp").write_text(f'#!/bin/sh\nexec {real} -l 800 "$@"\n')
    (shim / "scp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")


def _ssh_args(lab: SshLab, remote: Path, out: Path) -> list[str]:
    return ["--ssh-config", str(lab.config), "--remote-dir", str(remote), "--connect-timeout", "5", "--timeout", "300", "--out", str(out)]


def test_a_link_dropped_mid_copy_fails_the_host_with_exit_6_and_leaves_no_bundle(
    lab: SshLab, demo_bundle: Path, tmp_path: Path, slow_scp: None
) -> None:
    remote, out = tmp_path / "remote", tmp_path / "out"
    folder = remote / "demo"
    args = ["deploy", str(demo_bundle), "--host", "h1", "--backend", "onnxruntime", "--remote-cmd", _wrapper(tmp_path / "rc")]
    args += _ssh_args(lab, remote, out)

    def copying() -> bool:
        return any(p.stat().st_size > 0 for p in folder.glob(".model.rcb.part-*")) if folder.is_dir() else False

    cut, fired = when(copying, lambda: drop_link(lab, "h1"))
    result = runner.invoke(app, args)
    cut.join(1)
    assert fired, result.output
    assert result.exit_code == 6, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("h1: ")]
    assert line.startswith("h1: FAIL (exit 6) in ") and ", copy: lost the link to h1 during the copy: " in line
    assert not (folder / "model.rcb").exists()  # the remote side has no half-written bundle under the bundle's name
    (part,) = folder.glob(".model.rcb.part-*")
    assert 0 < part.stat().st_size < demo_bundle.stat().st_size
    record = json.loads((out / "h1" / "host.json").read_text())
    assert record["exit_code"] == 6 and record["bundle_sha256"] and record["stage"] == "copy"

    again = runner.invoke(app, args)  # the link is back
    assert again.exit_code == 0, again.output
    assert (folder / "model.rcb").read_bytes() == demo_bundle.read_bytes() and not list(folder.glob(".model.rcb.part-*"))


def _remote_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_link_dropped_mid_run_fails_that_host_the_others_finish_and_a_rerun_deploys_only_it(
    lab: SshLab, demo_bundle: Path, tmp_path: Path
) -> None:
    remote, out = tmp_path / "remote", tmp_path / "out"
    started = tmp_path / "h2-started"
    plain, marked = _wrapper(tmp_path / "rc"), _wrapper(tmp_path / "rc-marked", started)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "defaults:\n  backend: onnxruntime\nhosts:\n"
        f"  - host: h1\n    remote_cmd: {plain}\n  - host: h2\n    remote_cmd: {marked}\n  - host: h3\n    remote_cmd: {plain}\n"
    )
    # --parallel 1: the three "devices" are this machine, so they share one remote folder; one at a time
    args = ["deploy", str(demo_bundle), "--hosts", str(fleet), "--parallel", "1", *_ssh_args(lab, remote, out)]
    cut, fired = when(started.exists, lambda: drop_link(lab, "h2"))
    first = runner.invoke(app, args)
    cut.join(1)
    assert fired, first.output
    assert first.exit_code == 1, first.output
    hosts = {h["host"]: h for h in json.loads((out / "fleet.json").read_text())["hosts"]}
    assert hosts["h1"]["exit_code"] == 0 and hosts["h3"]["exit_code"] == 0 and hosts["h3"]["passed"] is True  # the others finished
    assert hosts["h2"]["exit_code"] == 6 and hosts["h2"]["stage"] == "deploy"
    assert hosts["h2"]["message"].startswith("lost the link to h2 during the remote run")
    assert "h2: FAIL (exit 6) in " in first.output and "fleet: 2 of 3 passed" in first.output
    deadline = time.monotonic() + 60  # the remote deploy cut off from its link ends (SIGPIPE) or finishes on its own
    while _remote_processes(str(remote / "demo" / "out")) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = [p.name for p in (remote / "demo").rglob(".*")]
    assert leftovers == []  # nothing half-written on the device: no partial bundle, report or model

    again = runner.invoke(app, args)  # the same command: only the host that did not pass runs
    assert again.exit_code == 0, again.output
    assert "h1: PASS (skipped) in " in again.output and "h3: PASS (skipped) in " in again.output
    assert "h2: PASS in " in again.output and "passed earlier with this bundle (sha256 " in again.output
    doc = json.loads((out / "fleet.json").read_text())
    assert doc["passed"] is True and [h["skipped"] for h in doc["hosts"]] == [True, False, True]

    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "skipped" not in forced.output and forced.output.count(": PASS in ") == 3


def test_a_device_whose_disk_is_full_fails_the_copy_with_exit_5_and_keeps_no_part(
    lab: SshLab, demo_bundle: Path, tmp_path: Path, small_fs: Callable[[int], Path]
) -> None:
    from faults_fixtures import fill

    device = small_fs(256)  # the "device's" disk: a full tmpfs
    (device / "rd").mkdir()
    fill(device)
    args = ["deploy", str(demo_bundle), "--host", "h1", "--backend", "onnxruntime", "--remote-cmd", _wrapper(tmp_path / "rc")]
    result = runner.invoke(app, [*args, *_ssh_args(lab, device / "rd", tmp_path / "out")])
    assert result.exit_code == 5, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("h1: ")]
    assert line.startswith("h1: FAIL (exit 5) in ") and f", copy: No space left on device on h1: {device}/rd/demo (needed " in line
    assert line.endswith(", 0 B free)")
    assert list((device / "rd" / "demo").iterdir()) == []  # the part of the failed copy was removed
