"""``rescompile deploy --host/--hosts`` against real OpenSSH servers on 127.0.0.1, running the CPU flow remotely.

The servers (tests/sshd.py) use throwaway keys and a client config passed with ``--ssh-config``
(``ssh -F``); the remote command is this checkout's rescompile run by this interpreter.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rescompile.cli import app
from tests.sshd import SshLab, free_port, keygen, start_lab
from tests.tools import SSHD, require

runner = CliRunner()
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module", autouse=True)
def _needs_sshd() -> None:
    require(SSHD, "OpenSSH server (sshd)", "apt-get install openssh-server")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    """Three sshd (h1, h2, h3), a port nobody listens on (down), a key the servers refuse (badkey)."""
    root = tmp_path_factory.mktemp("ssh")
    lab = start_lab(root, ["h1", "h2", "h3"])
    try:
        lab.add_host("down", free_port())
        keygen(root / "other_key")
        lab.add_host("badkey", lab.port("h1"), root / "other_key")
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def remote_cmd(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A wrapper the device runs as ``rescompile``: this interpreter, this checkout (the remote PATH has neither)."""
    path = tmp_path_factory.mktemp("bin") / "rescompile-here"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -c "from rescompile.cli import main; main()" "$@"\n')
    path.chmod(0o755)
    return str(path)


def _ssh_args(lab: SshLab, tmp_path: Path, remote_cmd: str) -> list[str]:
    return [
        "--ssh-config",
        str(lab.config),
        "--remote-cmd",
        remote_cmd,
        "--remote-dir",
        str(tmp_path / "remote"),
        "--connect-timeout",
        "5",
        "--timeout",
        "300",
        "--out",
        str(tmp_path / "out"),
    ]


def test_one_host_runs_the_device_flow_and_brings_back_the_report(lab: SshLab, remote_cmd: str, demo_bundle: Path, tmp_path: Path) -> None:
    args = ["deploy", str(demo_bundle), "--host", "h1", "--backend", "onnxruntime", *_ssh_args(lab, tmp_path, remote_cmd)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "deploy demo (onnxruntime, onnxruntime-int8)" in result.output  # the remote output, streamed
    assert "PASS min-agreement" in result.output and "h1: PASS" in result.output
    report = json.loads((tmp_path / "out" / "h1" / "deploy.json").read_text())
    assert report["passed"] is True and report["samples"] == 64
    assert (tmp_path / "remote" / "demo" / "model.rcb").read_bytes() == demo_bundle.read_bytes()
    assert (tmp_path / "out" / "h1" / "deploy.log").read_text().count("PASS min-agreement") == 1
    # the exit code is the remote one: TensorRT is not on this "device" (exit 3)
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--host", "h1", *_ssh_args(lab, tmp_path, remote_cmd)])
    assert result.exit_code == (0 if "tensorrt" in sys.modules else 3), result.output
    assert "TensorRT is not available" in " ".join(result.output.split())


def test_fleet_of_three_in_parallel(lab: SshLab, remote_cmd: str, demo_bundle: Path, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("defaults:\n  backend: onnxruntime\nhosts:\n  - h1\n  - host: h2\n    name: second\n  - h3\n")
    result = runner.invoke(
        app, ["deploy", str(demo_bundle), "--hosts", str(fleet), "--parallel", "3", *_ssh_args(lab, tmp_path, remote_cmd)]
    )
    assert result.exit_code == 0, result.output
    for label in ("h1", "second", "h3"):
        assert f"{label}: PASS" in result.output
        assert json.loads((tmp_path / "out" / label / "deploy.json").read_text())["passed"] is True
    doc = json.loads((tmp_path / "out" / "fleet.json").read_text())
    assert doc["passed"] is True and [h["host"] for h in doc["hosts"]] == ["h1", "second", "h3"]
    assert all(h["exit_code"] == 0 and h["agreement_top1"] >= 90 for h in doc["hosts"])
    assert "fleet: 3 of 3 passed" in result.output


def test_bad_hosts_fail_alone_and_say_why(lab: SshLab, remote_cmd: str, demo_bundle: Path, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "defaults:\n  backend: onnxruntime\nhosts:\n  - down\n  - badkey\n"
        "  - host: h2\n    name: norescompile\n    remote_cmd: /nonexistent/venv/bin/rescompile\n  - h1\n"
    )
    result = runner.invoke(
        app, ["deploy", str(demo_bundle), "--hosts", str(fleet), "--parallel", "2", *_ssh_args(lab, tmp_path, remote_cmd)]
    )
    assert result.exit_code == 1, result.output
    hosts = {h["host"]: h for h in json.loads((tmp_path / "out" / "fleet.json").read_text())["hosts"]}
    assert hosts["h1"]["exit_code"] == 0 and hosts["h1"]["passed"] is True  # the good host still deployed
    assert hosts["down"]["exit_code"] == 2 and hosts["down"]["stage"] == "connect"
    assert "Connection refused" in hosts["down"]["message"]
    assert hosts["badkey"]["exit_code"] == 2 and "Permission denied" in hosts["badkey"]["message"]
    assert hosts["norescompile"]["exit_code"] == 3 and "not found on h2" in hosts["norescompile"]["message"]
    assert "fleet: 1 of 4 passed" in result.output


@pytest.mark.parametrize(("host", "code", "said"), [("down", 2, "Connection refused"), ("badkey", 2, "Permission denied")])
def test_one_unreachable_host_is_one_clear_line(
    lab: SshLab, remote_cmd: str, demo_bundle: Path, tmp_path: Path, host: str, code: int, said: str
) -> None:
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--host", host, *_ssh_args(lab, tmp_path, remote_cmd)])
    assert result.exit_code == code
    assert f"cannot reach {host}" in result.output and said in result.output


def test_bad_destinations_and_fleet_files_exit_2(demo_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--host", "-oProxyCommand=touch /tmp/x"])
    assert result.exit_code == 2 and "not an ssh destination" in result.output
    fleet = tmp_path / "f.yaml"
    fleet.write_text("hosts:\n  - host: a\n    password: hunter2\n")
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--hosts", str(fleet)])
    assert result.exit_code == 2 and "unknown key(s) password" in result.output
    fleet.write_text("hosts: []\n")
    result = runner.invoke(app, ["deploy", str(demo_bundle), "--hosts", str(fleet)])
    assert result.exit_code == 2 and "lists no hosts" in result.output
