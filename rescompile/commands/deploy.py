"""``rescompile deploy``: a bundle on this device, or over SSH on one device (``--host``) or a fleet (``--hosts``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from rescompile.commands.base import app, console, err_console, show_failed_result
from rescompile.commands.groups import OptionGroup
from rescompile.io import write_json

_REMOTE = "Remote (SSH)"


@dataclass(frozen=True)
class DeployDevice(OptionGroup):
    """Where and how the bundle's model is built and run (on this device, or on each remote one)."""

    target: Annotated[str, typer.Option(help="Target profile (rescompile targets), or auto: this machine's GPU.")] = "auto"
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core (GPU fallback on).")] = None
    backend: Annotated[str, typer.Option(help="tensorrt (build the engine here) | onnxruntime (the same flow on a CPU).")] = "tensorrt"
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: <bundle>.deploy/ beside it).")] = None
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for --backend onnxruntime.")] = None
    cuda_lib: Annotated[str, typer.Option(help="Device buffers for the TensorRT run: auto | cuda-python | pycuda | torch.")] = "auto"
    rest_precision: Annotated[
        str, typer.Option(help="TensorRT: precision of the layers left unquantized, fp16 | fp32 (the engine is validated as built).")
    ] = "fp16"
    gate_mode: Annotated[
        str | None,
        typer.Option("--gate-mode", help="Override the bundle's gate mode: point | confident (the whole 95% interval must pass)."),
    ] = None
    no_default_gates: Annotated[
        bool, typer.Option("--no-default-gates", help="Skip the default floor when the bundle has no accuracy gate.")
    ] = False


@dataclass(frozen=True)
class RemoteFlags(OptionGroup):
    """Deploying over SSH on one device (--host) or a fleet (--hosts)."""

    host: Annotated[
        str | None, typer.Option(help="Deploy on this device over ssh: user@host or an ssh config Host.", rich_help_panel=_REMOTE)
    ] = None
    hosts: Annotated[
        Path | None, typer.Option(help="Deploy on every device of a fleet YAML file, in parallel.", rich_help_panel=_REMOTE)
    ] = None
    ssh_config: Annotated[
        Path | None, typer.Option(help="ssh config file (ssh -F); default: ssh's own (~/.ssh/config).", rich_help_panel=_REMOTE)
    ] = None
    remote_cmd: Annotated[str, typer.Option(help="How the device runs rescompile (shell words).", rich_help_panel=_REMOTE)] = "rescompile"
    remote_dir: Annotated[str, typer.Option(help="Folder on the device (relative: under its home).", rich_help_panel=_REMOTE)] = (
        "rescompile-deploy"
    )
    fetch_plan: Annotated[bool, typer.Option(help="Also copy the built plan and its sidecar back.", rich_help_panel=_REMOTE)] = False
    parallel: Annotated[int, typer.Option(min=1, help="Hosts deployed at once (--hosts).", rich_help_panel=_REMOTE)] = 4
    connect_timeout: Annotated[int, typer.Option(min=1, help="ssh ConnectTimeout, seconds.", rich_help_panel=_REMOTE)] = 10
    timeout: Annotated[float | None, typer.Option(min=1, help="Seconds allowed for one host's deploy.", rich_help_panel=_REMOTE)] = None
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Fleet: write the per-host results as JSON here (default: <out>/fleet.json).", rich_help_panel=_REMOTE),
    ] = None
    force: Annotated[
        bool,
        typer.Option(help="Fleet: deploy again on hosts that passed with this bundle before (else skipped).", rich_help_panel=_REMOTE),
    ] = False


@app.command(
    epilog="Examples:\n\n  rescompile deploy model.rcb                      (on the device: TensorRT)\n\n"
    "  rescompile deploy model.rcb --backend onnxruntime  (any CPU)\n\n"
    "  rescompile deploy model.rcb --host nvidia@orin-01 --fetch-plan\n\n"
    "  rescompile deploy model.rcb --hosts fleet.yaml --parallel 8",
)
def deploy(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE.rcb", help="A bundle written by `rescompile bundle`.")],
    *,
    device: DeployDevice,
    remote: RemoteFlags,
) -> None:
    """Build and validate a bundle's model on a device, like CI: exit 0 passed, 1 a gate failed.

    On the device: unpacks the bundle (every member hash-checked), builds the TensorRT engine for
    the detected or named target, checks the residual fusions, validates the engine's logits on
    the bundled reference inputs against the bundled FP32 logits under the bundled gates, and
    writes the plan, its sidecar, deploy.json, deploy.md and junit.xml. Without TensorRT it exits 3;
    --backend onnxruntime runs the same flow on a CPU. Needs neither PyTorch nor onnxsim.

    With --host or --hosts, copies the bundle with the system's ssh/scp (your keys, agent and ssh
    config; BatchMode, never a password prompt), runs `rescompile deploy` there, streams its output,
    copies the reports back to <out>/<host>/ and exits with the device's exit code (a fleet: 1 if any
    host failed). A link that drops during the copy or the run fails that host with exit 6; running
    the same fleet command again skips the hosts that passed with this bundle (--force: all again).
    """
    from rescompile.errors import UsageError

    if remote.host is not None or remote.hosts is not None:
        if remote.host is not None and remote.hosts is not None:
            raise UsageError("give --host or --hosts, not both")
        _remote(bundle, device, remote)
        return
    from rescompile.deploy.device import DeployOptions
    from rescompile.deploy.device import deploy as run_deploy
    from rescompile.engine.settings import check_rest_precision
    from rescompile.runtime.cuda_libs import check_choice

    with show_failed_result(_print_local):  # a failed gate still shows the run (exit 1)
        result = run_deploy(
            bundle,
            DeployOptions(
                device.backend,
                device.target,
                device.dla_core,
                device.out,
                device.threads,
                cuda_lib=check_choice(device.cuda_lib),
                rest_precision=check_rest_precision(device.rest_precision),
                gate_mode=device.gate_mode,
                no_default_gates=device.no_default_gates,
            ),
        )
    _print_local(result)


def _print_local(result: Any) -> None:
    r = result.typed
    m = r.measurement
    top1 = m.accuracy.candidate.top1
    console.print(
        f"deploy {r.model.get('name', 'model')} ({r.backend}, {m.candidate}): {m.samples} reference inputs, "
        f"agreement {m.agreement.top1:.2f}%, cosine {m.agreement.cosine_mean:.5f}" + (f", top-1 {top1:.2f}%" if top1 is not None else ""),
        highlight=False,
    )
    for g in r.gates:
        console.print(("PASS " if g.passed else "[red]FAIL[/] ") + escape(f"{g.name}: {g.message}"), highlight=False)
    if not r.gates:
        console.print("no gates bundled and the default floor is off: nothing to fail on", highlight=False)
    console.print(f"{'passed' if result.passed else 'FAILED'}: {result.out}/ (deploy.json, deploy.md, junit.xml)", highlight=False)


def _remote(bundle: Path, device: DeployDevice, flags: RemoteFlags) -> None:
    from rescompile.deploy import remote

    specs, opts = _remote_options(bundle, device, flags)
    if flags.hosts is None:
        (spec,) = specs
        console.print(f"deploying {bundle.name} on {spec.destination} ...", highlight=False)
        res = remote.deploy_host(
            bundle, spec, opts, on_line=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)
        )
        _host_line(res)
        raise typer.Exit(res.exit_code)

    console.print(f"deploying {bundle.name} on {len(specs)} hosts, {flags.parallel} at a time", highlight=False)
    results = remote.deploy_fleet(bundle, specs, opts, parallel=flags.parallel, on_done=_host_line, force=flags.force)
    t = Table(title=f"fleet: {sum(r.exit_code == 0 for r in results)} of {len(results)} passed", title_justify="left")
    for col in ("host", "exit", "stage", "agreement", "seconds", "message"):
        t.add_column(col, overflow="fold")
    for r in results:
        t.add_row(
            escape(r.host),
            str(r.exit_code),
            r.stage,
            "-" if r.agreement_top1 is None else f"{r.agreement_top1:.2f}%",
            f"{r.seconds:.1f}",
            escape(r.message),
        )
    console.print(t)
    doc = {
        "schema": "rescompile.fleet/1",
        "bundle": str(bundle),
        "bundle_sha256": results[0].bundle_sha256 if results else None,
        "passed": all(r.exit_code == 0 for r in results),
        "hosts": [r.to_dict() for r in results],
    }
    path = flags.json_out or Path(opts.out) / "fleet.json"
    write_json(Path(path), doc)
    console.print(f"results: {path}", highlight=False)
    raise typer.Exit(0 if doc["passed"] else 1)


def _host_line(r: Any) -> None:
    status = ("PASS (skipped)" if r.skipped else "PASS") if r.exit_code == 0 else f"FAIL (exit {r.exit_code})"
    line = f"{r.host}: {status} in {r.seconds:.1f} s, {r.stage}: {r.message}"
    (console if r.exit_code == 0 else err_console).print(line, markup=False, highlight=False, soft_wrap=True)


def _remote_options(bundle: Path, device: DeployDevice, flags: RemoteFlags) -> tuple[list[Any], Any]:
    """The hosts and the :class:`rescompile.deploy.remote.RemoteOptions`: the fleet file's defaults under the flags."""
    from rescompile.deploy import remote
    from rescompile.engine.settings import check_rest_precision
    from rescompile.readers import check_file
    from rescompile.runtime.cuda_libs import check_choice

    remote.check_tools()
    check_file(bundle, "bundle")
    if flags.ssh_config is not None:
        check_file(flags.ssh_config, "ssh config")
    defaults: dict[str, Any] = {}
    if flags.hosts is not None:
        specs, defaults = remote.load_fleet(flags.hosts)
    else:
        remote.check_destination(flags.host or "")
        specs = [remote.HostSpec(flags.host or "")]
    out = device.out if device.out is not None else bundle.with_suffix(".deploy")
    opts = remote.RemoteOptions(
        remote_cmd=flags.remote_cmd if flags.remote_cmd != "rescompile" else defaults.get("remote_cmd", "rescompile"),
        remote_dir=defaults.get("remote_dir", flags.remote_dir),
        ssh_config=flags.ssh_config,
        connect_timeout=int(defaults.get("connect_timeout", flags.connect_timeout)),
        backend=defaults.get("backend", device.backend) if device.backend == "tensorrt" else device.backend,
        target=defaults.get("target", device.target) if device.target == "auto" else device.target,
        dla_core=device.dla_core if device.dla_core is not None else defaults.get("dla_core"),
        cuda_lib=check_choice(device.cuda_lib if device.cuda_lib != "auto" else str(defaults.get("cuda_lib", "auto"))),
        rest_precision=check_rest_precision(device.rest_precision),
        fetch_plan=flags.fetch_plan,
        gate_mode=device.gate_mode,
        no_default_gates=device.no_default_gates,
        out=out,
        timeout=flags.timeout,
    )
    return specs, opts
