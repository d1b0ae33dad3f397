"""``rescompile deploy --host/--hosts``: run the device flow on one device or a fleet over the system's OpenSSH.

Every connection is the user's own ``ssh``/``scp``: their keys, agent, ``~/.ssh/config`` (or
``--ssh-config``, passed as ``-F``) and known_hosts. ``BatchMode=yes`` is always set, so a
host that would ask for a password or a passphrase fails at once instead of prompting, and
no password ever appears on a command line. Per host: make the remote folder, copy the
bundle, run ``<remote-cmd> deploy`` there (its output streamed), copy the reports back (and
the plan with ``fetch_plan``); the host's result is the remote exit code.

Exit codes of the remote step are kept as they are (0 passed, 1 a gate failed, 2 bad input,
3 missing TensorRT, 5 the device's disk is full...); ``ssh`` itself exits 255 when it cannot
connect or authenticate, which becomes :data:`UNREACHABLE` here, and a remote shell's 126/127
("command not found") becomes :data:`NOT_INSTALLED`, each with a one-line reason. A link that
drops after the connection was made (during the copy, the remote run or the fetch) is
:data:`LINK_LOST` (exit 6, :class:`~rescompile.errors.WorkerLost`): that host failed, the others go on.

Nothing is left half-written on either side: the bundle is copied to a hidden ``.model.rcb.part-*``
name and renamed to ``model.rcb`` by the command that runs it (the next run removes a part left by
a dropped link), the device writes its plan and reports whole (``rescompile.io``), and fetched files
are renamed into place only once complete. Each host's outcome is recorded in
``<out>/<host>/`` :data:`HOST_RECORD` with the bundle's sha256 and the remote command, so
:func:`deploy_fleet` skips a host that already passed with the same bundle and command (``force``
runs it again): a flaky link costs one host's time, not the fleet's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
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
from rescompile.errors import EnvironmentFault, MissingDependency, UsageError, WorkerLost, environment_fault

SSH_FAILED = 255  # OpenSSH: "ssh exits with the exit status of the remote command or with 255 if an error occurred"
UNREACHABLE = 2  # a host that cannot be reached or refuses the key: the user's input (host, key) is wrong
NOT_INSTALLED = 3  # rescompile is not on the remote PATH: a missing dependency on the device
LINK_LOST = WorkerLost.exit_code  # the link dropped after connecting (copy, remote run, fetch): run the fleet again
REMOTE_FAULT = EnvironmentFault.exit_code  # the device's disk is full or read-only (seen in the copy's own message)
HOST_RECORD = "host.json"  # <out>/<host>/host.json: the host's last result, with the bundle's sha256
HOST_SCHEMA = "rescompile.fleet-host/1"
# What ssh/scp print when an established connection goes away (as opposed to a refused one, or a remote error).
_LINK_LOST = re.compile(
    r"connection (closed|reset|lost|timed out)|broken pipe|lost connection|client_loop|packet_write|timeout, server|"
    r"connection to .* closed by remote host|disconnected",
    re.IGNORECASE,
)
_DISK_FULL = re.compile(r"no space left on device|disk quota exceeded|read-only file system|input/output error", re.IGNORECASE)
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
    rest_precision: str = "fp16"  # forwarded when not the default
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
    bundle_sha256: str | None = None
    skipped: bool = False  # passed earlier with this bundle and command (deploy_fleet without force)

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
    if opts.rest_precision != "fp16":
        args += ["--rest-precision", opts.rest_precision]
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


def host_folder(opts: RemoteOptions, host: HostSpec) -> Path:
    """``<out>/<host>``: where a host's fetched files, ``deploy.log`` and :data:`HOST_RECORD` go."""
    return Path(opts.out) / _SAFE.sub("_", host.label)


def remote_folder(opts: RemoteOptions, bundle: Path) -> str:
    return f"{opts.remote_dir.rstrip('/')}/{_SAFE.sub('_', bundle.stem) or 'model'}"


def deploy_host(
    bundle: Path, host: HostSpec, opts: RemoteOptions, on_line: Callable[[str], None] | None = None, *, sha256: str | None = None
) -> HostResult:
    """Deploy ``bundle`` on one host; never raises for a host's failure (the result says what failed).

    Args:
        bundle: the local ``.rcb`` file.
        host: the device.
        opts: the shared options; ``opts.out / <host>`` receives the fetched files, ``deploy.log`` and :data:`HOST_RECORD`.
        on_line: called with every line of the remote deploy's output as it arrives (streaming).
        sha256: the bundle's sha256, when the caller has it (recorded with the result).

    Raises:
        EnvironmentFault: this machine's disk failed writing the host's files (exit 5).
    """
    from rescompile.io import sha256_file

    t0 = time.perf_counter()
    local = host_folder(opts, host)
    local.mkdir(parents=True, exist_ok=True)
    folder = remote_folder(opts, bundle)
    ssh = ssh_base(opts, host.port)
    digest = sha256 or sha256_file(bundle)
    command = remote_deploy_command(host, opts, folder)
    run = _HostRun(bundle, host, opts, t0, local, folder, ssh, digest, command, f"{folder}/.model.rcb.part-{secrets.token_hex(4)}")
    failed = _copy_bundle(run)
    if failed is not None:
        return failed
    code, tail = _run_remote_deploy(run, on_line)
    if code == SSH_FAILED:
        return run.done(LINK_LOST, "deploy", f"lost the link to {run.dest} during the remote run: {_first_error(chr(10).join(tail))}")
    if code in (126, 127):
        return run.done(
            NOT_INSTALLED,
            "deploy",
            f"{(host.remote_cmd or opts.remote_cmd).split()[0]!r} not found on {run.dest} "
            f"(remote exit {code}: {_first_error(chr(10).join(tail))})",
        )
    return _fetch_results(run, code, tail)


@dataclass(frozen=True)
class _HostRun:
    """One host's deployment under way: where its files go, and how its outcome is recorded (:meth:`done`)."""

    bundle: Path
    host: HostSpec
    opts: RemoteOptions
    t0: float  # when the deployment started (perf_counter)
    local: Path  # host_folder(): fetched files, deploy.log, HOST_RECORD
    folder: str  # the folder on the device
    ssh: list[str]
    digest: str  # the bundle's sha256
    command: str  # the remote deploy command
    part: str  # where the bundle is copied to on the device (renamed to model.rcb only when whole)

    @property
    def dest(self) -> str:
        return self.host.destination

    def done(self, code: int, stage: str, message: str, **kw: Any) -> HostResult:
        """The host's result, written to ``<local>/HOST_RECORD`` with the command."""
        from rescompile.io import write_json

        res = HostResult(
            self.host.label, self.dest, code, round(time.perf_counter() - self.t0, 3), stage, message, bundle_sha256=self.digest, **kw
        )
        write_json(self.local / HOST_RECORD, {"schema": HOST_SCHEMA, "command": self.command, **res.to_dict()})
        return res

    def ssh_failure(self, stage: str, proc: subprocess.CompletedProcess[str], connected: bool) -> HostResult:
        """The result of a failed ssh/scp call: the device's disk, a lost link, an unreachable host, or the remote error."""
        dest = self.dest
        said = _first_error(proc.stderr or proc.stdout)
        if _DISK_FULL.search(said):
            return self.done(REMOTE_FAULT, stage, f"{stage} failed on {dest}: {said}")
        if connected and (proc.returncode == SSH_FAILED or _LINK_LOST.search(said)):
            return self.done(LINK_LOST, stage, f"lost the link to {dest} during the {stage}: {said}")
        if proc.returncode == SSH_FAILED:
            return self.done(UNREACHABLE, stage, f"cannot reach {dest}: {said}")
        return self.done(proc.returncode, stage, f"{stage} failed on {dest}: {said}")


def _copy_bundle(run: _HostRun) -> HostResult | None:
    """Make the device's folder and copy the bundle to a part file there; the failure's result, or None once copied."""
    q = shlex.quote
    opts, folder, dest = run.opts, run.folder, run.dest
    # the folder, without the part a dropped copy may have left there
    proc = _run([*run.ssh, "--", dest, f"mkdir -p {q(folder)} && rm -f {q(folder)}/.model.rcb.part-*"], opts.connect_timeout * 3 + 30)
    if proc.returncode != 0:
        return run.ssh_failure("connect", proc, connected=False)
    part = run.part
    proc = _run([*ssh_base(opts, run.host.port, scp=True), "--", str(run.bundle), f"{dest}:{part}"], opts.timeout)
    if proc.returncode != 0:
        full = None if _LINK_LOST.search(proc.stderr or "") else _remote_space(run.ssh, dest, folder, part, run.bundle.stat().st_size)
        if full is not None:  # scp over SFTP says only "failed to upload": the device's disk is full, say so (exit 5)
            return run.done(REMOTE_FAULT, "copy", f"No space left on device on {dest}: {folder} ({full})")
        return run.ssh_failure("copy", proc, connected=True)
    return None


def _run_remote_deploy(run: _HostRun, on_line: Callable[[str], None] | None) -> tuple[int, list[str]]:
    """Name the copied bundle model.rcb and run the deploy on the device, streaming its output to ``deploy.log``
    and ``on_line``; its exit code and last 20 lines."""
    q = shlex.quote
    log_path = run.local / "deploy.log"
    # the whole bundle takes its name only now: a copy cut short never looks like a bundle
    cmd = [*run.ssh, "--", run.dest, f"mv -f {q(run.part)} {q(run.folder)}/model.rcb && {run.command}"]
    tail: list[str] = []
    try:
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed below, streamed line by line
    except OSError as exc:
        raise environment_fault(exc, log_path) or exc from None
    with log:
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
        )
        timer = threading.Timer(run.opts.timeout, p.kill) if run.opts.timeout else None
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
    return code, tail


def _fetch_results(run: _HostRun, code: int, tail: list[str]) -> HostResult:
    """Fetch the deploy's report files (and the plan with ``fetch_plan``) and say how the host did."""
    opts, local, dest = run.opts, run.local, run.dest
    wanted = DEPLOY_FETCHED + (ENGINE_ARTIFACTS if opts.fetch_plan else ())
    fetched: list[str] = []
    for name in wanted:
        proc = _fetch(opts, run.host, f"{dest}:{run.folder}/out/{name}", local / name)
        if proc.returncode == 0:
            fetched.append(name)
        elif proc.returncode == SSH_FAILED or _LINK_LOST.search(proc.stderr or ""):
            return run.done(LINK_LOST, "fetch", f"lost the link to {dest} fetching {name}: {_first_error(proc.stderr)}", fetched=fetched)
    report, passed, top1 = None, None, None
    if DEPLOY_REPORT in fetched:
        report = str(local / DEPLOY_REPORT)
        passed, top1 = _summary(local / DEPLOY_REPORT)
    missing_plan = opts.fetch_plan and PLAN not in fetched and code == 0
    message = _first_error(chr(10).join(tail)) if code != 0 else "passed" + (" (no plan to fetch)" if missing_plan else "")
    return run.done(code, "done", message, report=report, passed=passed, agreement_top1=top1, fetched=fetched)


def _remote_space(ssh: list[str], dest: str, folder: str, part: str, needed: int) -> str | None:
    """After a failed copy: remove its part and return "needed X, Y free" when the device's disk lacks room, else None."""
    from rescompile.errors import format_bytes

    q = shlex.quote
    proc = _run([*ssh, "--", dest, f"rm -f {q(part)}; df -Pk {q(folder)} | tail -n 1"], 60)
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) < 4 or not fields[3].isdigit():
        return None
    free = int(fields[3]) * 1024
    return f"needed {format_bytes(needed)}, {format_bytes(free)} free" if free < needed else None


def _fetch(opts: RemoteOptions, host: HostSpec, source: str, target: Path) -> subprocess.CompletedProcess[str]:
    """``scp`` one file back, under a hidden name renamed into place once whole (a dropped link leaves no half file)."""
    part = target.with_name(f".{target.name}.part-{secrets.token_hex(4)}")
    try:
        proc = _run([*ssh_base(opts, host.port, scp=True), "--", source, str(part)], 120)
        if proc.returncode == 0:
            os.replace(part, target)
        return proc
    except OSError as exc:
        raise environment_fault(exc, target) or exc from None
    finally:
        part.unlink(missing_ok=True)


def previous_pass(bundle_sha256: str, host: HostSpec, opts: RemoteOptions, bundle: Path) -> HostResult | None:
    """The recorded result of ``host`` when it passed with this very bundle and remote command, else None."""
    path = host_folder(opts, host) / HOST_RECORD
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != HOST_SCHEMA:
        return None
    command = remote_deploy_command(host, opts, remote_folder(opts, bundle))
    same = doc.get("bundle_sha256") == bundle_sha256 and doc.get("command") == command
    if not same or doc.get("exit_code") != 0 or doc.get("destination") != host.destination:
        return None
    known = {f for f in HostResult.__dataclass_fields__ if f in doc}
    try:
        res = HostResult(**{k: doc[k] for k in known})
    except TypeError:
        return None
    res.skipped, res.seconds = True, 0.0
    res.message = f"passed earlier with this bundle (sha256 {bundle_sha256[:12]}); --force runs it again"
    return res


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
    bundle: Path,
    hosts: list[HostSpec],
    opts: RemoteOptions,
    *,
    parallel: int = 4,
    on_done: Callable[[HostResult], None] | None = None,
    force: bool = False,
) -> list[HostResult]:
    """Deploy to every host with at most ``parallel`` at once; ``on_done`` as each finishes. One host's failure stops no other.

    A host whose :data:`HOST_RECORD` says it passed with this bundle (its sha256) and the same remote command is not
    run again (its result comes back with ``skipped``), unless ``force``: rerunning a fleet after a dropped link
    deploys only the hosts that did not pass.
    """
    from rescompile.io import sha256_file

    digest = sha256_file(bundle)
    results: list[HostResult] = []
    todo = []
    for h in hosts:
        earlier = None if force else previous_pass(digest, h, opts, bundle)
        if earlier is None:
            todo.append(h)
            continue
        results.append(earlier)
        if on_done is not None:
            on_done(earlier)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(deploy_host, bundle, h, opts, sha256=digest): h for h in todo}
        for fut in as_completed(futures):
            host = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # a bug on one host, or this machine's disk (exit 5), must not stop the others
                fault = environment_fault(exc)
                code, message = (fault.exit_code, fault.message) if fault is not None else (4, f"{type(exc).__name__}: {exc}")
                res = HostResult(host.label, host.destination, code, 0.0, "internal", message, bundle_sha256=digest)
            results.append(res)
            if on_done is not None:
                on_done(res)
    order = {h.label: i for i, h in enumerate(hosts)}
    return sorted(results, key=lambda r: order[r.host])
