"""``rescompile deploy --host/--hosts``: run the device flow on one device or a fleet over the system's OpenSSH.

Every connection is the user's own ``ssh``/``scp``: their keys, agent, ``~/.ssh/config`` (or
``--ssh-config``, passed as ``-F``) and known_hosts. ``BatchMode=yes`` is always set, so a
host that would ask for a password or a passphrase fails at once instead of prompting, and
no password ever appears on a command line. Per host: make the remote folder, copy the
bundle, run ``<remote-cmd> deploy`` there (its output streamed), copy the reports back (and
the plan with ``fetch_plan``); the host's result is the remote exit code.

Exit codes of the remote step are kept as they are (0 passed, 1 a gate failed, 2 bad input,
3 missing TensorRT...); ``ssh`` itself exits 255 when it cannot connect or authenticate,
which becomes :data:`UNREACHABLE` here, and a remote shell's 126/127 ("command not found")
becomes :data:`NOT_INSTALLED`, each with a one-line reason.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rescompile.buildfolder import DEPLOY_FETCHED, DEPLOY_REPORT, ENGINE_ARTIFACTS, PLAN
from rescompile.errors import MissingDependency, UsageError

SSH_FAILED = 255  # OpenSSH: "ssh exits with the exit status of the remote command or with 255 if an error occurred"
UNREACHABLE = 2  # a host that cannot be reached or refuses the key: the user's input (host, key) is wrong
NOT_INSTALLED = 3  # rescompile is not on the remote PATH: a missing dependency on the device
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class HostSpec:
    """One device: an ssh destination (``user@host`` or a Host alias of the ssh config) and its own options."""

    destination: str
    name: str = ""
    port: int | None = None
    backend: str | None = None
    target: str | None = None
    dla_core: int | None = None
    remote_cmd: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.destination


@dataclass(frozen=True)
class RemoteOptions:
    """What every host shares (a fleet file's ``defaults`` and the command line)."""

    remote_cmd: str = "rescompile"
    remote_dir: str = "rescompile-deploy"  # relative: under the remote user's home
    ssh_config: Path | None = None
    connect_timeout: int = 10
    backend: str = "tensorrt"
    target: str = "auto"
    dla_core: int | None = None
    cuda_lib: str = "auto"
    gate_mode: str | None = None  # forwarded as --gate-mode
    no_default_gates: bool = False  # forwarded as --no-default-gates
    fetch_plan: bool = False
    out: Path = Path("deploy")
    timeout: float | None = None  # seconds for the remote deploy of one host


@dataclass
class HostResult:
    host: str
    destination: str
    exit_code: int
    seconds: float
    stage: str  # where it ended: connect, copy, deploy, fetch, done
    message: str
    report: str | None = None  # local path of the fetched deploy.json
    passed: bool | None = None
    agreement_top1: float | None = None
    fetched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_tools() -> None:
    """``ssh`` and ``scp`` on PATH, or MissingDependency (exit 3)."""
    missing = [t for t in ("ssh", "scp") if shutil.which(t) is None]
    if missing:
        raise MissingDependency(
            f"{' and '.join(missing)} not found on PATH: deploying to a device uses the system's OpenSSH",
            hint="install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client)",
        )


def check_destination(dest: str) -> None:
    """A destination is ``[user@]host`` (no spaces, not an option): refuse what ssh would parse as a flag."""
    if not dest or dest.startswith("-") or any(c.isspace() or not c.isprintable() for c in dest) or "/" in dest:
        raise UsageError(f"{dest!r} is not an ssh destination", hint="user@host, or a Host alias of your ssh config")


def ssh_base(opts: RemoteOptions, port: int | None, *, scp: bool = False) -> list[str]:
    """The ``ssh``/``scp`` command head: BatchMode (never a prompt), the connect timeout, the config file, the port."""
    cmd = ["scp" if scp else "ssh"]
    if opts.ssh_config is not None:
        cmd += ["-F", str(opts.ssh_config)]
    cmd += [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={opts.connect_timeout}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    if port is not None:
        cmd += ["-P" if scp else "-p", str(port)]
    if scp:
        cmd += ["-q"]
    return cmd


def remote_deploy_command(host: HostSpec, opts: RemoteOptions, folder: str) -> str:
    """The shell command the device runs (``remote_cmd`` is taken as shell words; everything else is quoted)."""
    backend = host.backend or opts.backend
    target = host.target or opts.target
    dla = host.dla_core if host.dla_core is not None else opts.dla_core
    args = ["deploy", f"{folder}/model.rcb", "--out", f"{folder}/out", "--backend", backend, "--target", target]
    if dla is not None:
        args += ["--dla-core", str(dla)]
    if opts.cuda_lib != "auto":
        args += ["--cuda-lib", opts.cuda_lib]
    if opts.gate_mode is not None:
        args += ["--gate-mode", opts.gate_mode]
    if opts.no_default_gates:
        args += ["--no-default-gates"]
    return f"{host.remote_cmd or opts.remote_cmd} " + " ".join(shlex.quote(a) for a in args)


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently added")]
    return lines[-1][:300] if lines else "no message"


def _run(cmd: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, SSH_FAILED, "", f"timed out after {timeout:.0f} s")


def deploy_host(bundle: Path, host: HostSpec, opts: RemoteOptions, on_line: Callable[[str], None] | None = None) -> HostResult:
    """Deploy ``bundle`` on one host; never raises for a host's failure (the result says what failed).

    Args:
        bundle: the local ``.rcb`` file.
        host: the device.
        opts: the shared options; ``opts.out / <host>`` receives the fetched files and ``deploy.log``.
        on_line: called with every line of the remote deploy's output as it arrives (streaming).
    """
    t0 = time.perf_counter()
    label = host.label
    local = Path(opts.out) / _SAFE.sub("_", label)
    local.mkdir(parents=True, exist_ok=True)
    stem = _SAFE.sub("_", bundle.stem) or "model"
    folder = f"{opts.remote_dir.rstrip('/')}/{stem}"
    ssh = ssh_base(opts, host.port)
    dest = host.destination

    def done(code: int, stage: str, message: str, **kw: Any) -> HostResult:
        return HostResult(label, dest, code, round(time.perf_counter() - t0, 3), stage, message, **kw)

    def ssh_failure(stage: str, proc: subprocess.CompletedProcess[str]) -> HostResult:
        if proc.returncode == SSH_FAILED:
            return done(UNREACHABLE, stage, f"cannot reach {dest}: {_first_error(proc.stderr)}")
        return done(proc.returncode, stage, f"{stage} failed on {dest}: {_first_error(proc.stderr or proc.stdout)}")

    proc = _run([*ssh, "--", dest, f"mkdir -p {shlex.quote(folder)}"], opts.connect_timeout * 3 + 30)
    if proc.returncode != 0:
        return ssh_failure("connect", proc)
    proc = _run([*ssh_base(opts, host.port, scp=True), "--", str(bundle), f"{dest}:{folder}/model.rcb"], opts.timeout)
    if proc.returncode != 0:
        return ssh_failure("copy", proc)

    log_path = local / "deploy.log"
    cmd = [*ssh, "--", dest, remote_deploy_command(host, opts, folder)]
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
        )
        timer = threading.Timer(opts.timeout, p.kill) if opts.timeout else None
        if timer:
            timer.start()
        assert p.stdout is not None  # noqa: S101 - stdout=PIPE
        for line in p.stdout:
            log.write(line)
            tail = (tail + [line.rstrip("\n")])[-20:]
            if on_line is not None:
                on_line(line.rstrip("\n"))
        code = p.wait()
        if timer:
            timer.cancel()
    if code == SSH_FAILED:
        return done(UNREACHABLE, "deploy", f"lost {dest}: {_first_error(chr(10).join(tail))}")
    if code in (126, 127):
        return done(
            NOT_INSTALLED,
            "deploy",
            f"{(host.remote_cmd or opts.remote_cmd).split()[0]!r} not found on {dest} "
            f"(remote exit {code}: {_first_error(chr(10).join(tail))})",
        )

    wanted = DEPLOY_FETCHED + (ENGINE_ARTIFACTS if opts.fetch_plan else ())
    fetched: list[str] = []
    for name in wanted:
        proc = _run([*ssh_base(opts, host.port, scp=True), "--", f"{dest}:{folder}/out/{name}", str(local / name)], 120)
        if proc.returncode == 0:
            fetched.append(name)
    report, passed, top1 = None, None, None
    if DEPLOY_REPORT in fetched:
        report = str(local / DEPLOY_REPORT)
        passed, top1 = _summary(local / DEPLOY_REPORT)
    missing_plan = opts.fetch_plan and PLAN not in fetched and code == 0
    message = _first_error(chr(10).join(tail)) if code != 0 else "passed" + (" (no plan to fetch)" if missing_plan else "")
    return done(code, "done", message, report=report, passed=passed, agreement_top1=top1, fetched=fetched)


def _summary(path: Path) -> tuple[bool | None, float | None]:
    from rescompile.readers import read_json_object

    try:
        doc = read_json_object(path, "deploy report")
    except UsageError:
        return None, None
    found = doc.get("agreement")
    agr: dict[str, Any] = found if isinstance(found, dict) else {}
    top1 = agr.get("top1") if isinstance(agr.get("top1"), (int, float)) else None
    passed = doc.get("passed") if isinstance(doc.get("passed"), bool) else None
    return passed, top1


# ---------------------------------------------------------------- fleets


def _host_from(entry: Any, where: str) -> HostSpec:
    if isinstance(entry, str):
        check_destination(entry)
        return HostSpec(entry)
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: a host is a string (user@host) or a mapping with 'host'")
    known = {"host", "name", "port", "backend", "target", "dla_core", "dla-core", "remote_cmd", "remote-cmd"}
    unknown = sorted(str(k) for k in entry if k not in known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}", hint="one of: " + ", ".join(sorted(known)))
    dest = entry.get("host")
    if not isinstance(dest, str):
        raise UsageError(f"{where}: 'host' (user@host) is missing")
    check_destination(dest)
    port, dla = entry.get("port"), entry.get("dla_core", entry.get("dla-core"))
    for key, value, lo in (("port", port, 1), ("dla_core", dla, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise UsageError(f"{where}: {key} must be an integer >= {lo}")
    strs = {k: entry.get(k, entry.get(k.replace("_", "-"))) for k in ("name", "backend", "target", "remote_cmd")}
    for k, v in strs.items():
        if v is not None and not isinstance(v, str):
            raise UsageError(f"{where}: {k} must be a string")
    return HostSpec(dest, strs["name"] or "", port, strs["backend"], strs["target"], dla, strs["remote_cmd"])


def load_fleet(path: Path) -> tuple[list[HostSpec], dict[str, Any]]:
    """Read ``fleet.yaml``: ``hosts:`` (strings or mappings) and optional ``defaults:`` (remote_cmd, backend, ...).

    Raises:
        UsageError: unreadable, not YAML, no hosts, unknown keys, duplicate names.
    """
    from rescompile.readers import read_yaml

    doc = read_yaml(path, "fleet file")
    if isinstance(doc, list):
        doc = {"hosts": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("hosts"), list) or not doc["hosts"]:
        raise UsageError(f"{path} lists no hosts", hint="write 'hosts:' followed by '- user@device' lines")
    unknown = sorted(str(k) for k in doc if k not in ("hosts", "defaults"))
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)} (expected hosts, defaults)")
    defaults = doc.get("defaults") or {}
    allowed = {"remote_cmd", "remote_dir", "backend", "target", "dla_core", "cuda_lib", "connect_timeout"}
    if not isinstance(defaults, dict) or any(str(k).replace("-", "_") not in allowed for k in defaults):
        raise UsageError(f"{path}: 'defaults' takes {', '.join(sorted(allowed))}")
    hosts = [_host_from(e, f"{path} host {i + 1}") for i, e in enumerate(doc["hosts"])]
    labels = [h.label for h in hosts]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UsageError(f"{path}: host(s) listed twice: {', '.join(dup)}", hint="give each a distinct 'name'")
    return hosts, {str(k).replace("-", "_"): v for k, v in defaults.items()}


def deploy_fleet(
    bundle: Path, hosts: list[HostSpec], opts: RemoteOptions, *, parallel: int = 4, on_done: Callable[[HostResult], None] | None = None
) -> list[HostResult]:
    """Deploy to every host with at most ``parallel`` at once; ``on_done`` as each finishes. One host's failure stops no other."""
    results: list[HostResult] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(deploy_host, bundle, h, opts): h for h in hosts}
        for fut in as_completed(futures):
            host = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # a bug on one host (e.g. a local disk error) must not stop the others
                res = HostResult(host.label, host.destination, 4, 0.0, "internal", f"{type(exc).__name__}: {exc}")
            results.append(res)
            if on_done is not None:
                on_done(res)
    order = {h.label: i for i, h in enumerate(hosts)}
    return sorted(results, key=lambda r: order[r.host])
