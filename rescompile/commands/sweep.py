"""``rescompile sweep``: a grid of builds on Ray (local by default), resumable, with a summary and a Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.commands import options as o
from rescompile.commands.base import app, console, log_to_stderr


@app.command(
    epilog="Example:\n\n  rescompile sweep sweep.yaml --out sweeps/resnets\n\n"
    "  rescompile sweep sweep.yaml --ray-address 10.0.0.5:6379   # the same file on a cluster",
)
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep file (YAML): base settings and a grid of lists (docs/scale.md).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Sweep folder (default: the file's 'out', else sweeps/<name>).")] = None,
    ray_address: o.RayAddressOpt = None,
    cpus_per_build: Annotated[int, typer.Option(min=1, help="CPUs each build's Ray task asks for.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per finished build.")] = False,
) -> None:
    """Build every configuration of a grid (models x policies x methods x keep-fp x targets) as Ray tasks.

    Each build has its own folder under <out>/builds/<key> (key: the hash of its configuration); a rerun
    skips finished builds. One failing build does not stop the others. Writes sweep.json, sweep.md and
    sweep.html (accuracy against latency, Pareto front marked). Exit 1 when any build failed or missed a gate.
    """
    from rescompile.config import RaySettings
    from rescompile.sweep.grid import load_sweep, run_sweep
    from rescompile.sweep.summary import write_summary

    log_to_stderr(True)
    plan = load_sweep(spec, out)
    settings = RaySettings(address=ray_address)
    console.print(f"sweep: {len(plan.points)} builds in {plan.out} on {settings.where()}", highlight=False)

    def line(r: dict[str, Any]) -> None:
        if not quiet:
            tag = "reused" if r.get("skipped") else r["status"]
            console.print(
                f"  {r['key'][:12]} {tag}: " + ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items()), highlight=False, markup=False
            )

    results = run_sweep(plan, settings, cpus_per_build=cpus_per_build, on_done=line)
    doc = write_summary(plan.out, results)
    c = doc["counts"]
    console.print(
        f"wrote {plan.out}/sweep.md, sweep.json, sweep.html: {c['ok']} ok, {c['gate-failed']} missed a gate, {c['error']} failed",
        highlight=False,
    )
    if doc["counts"]["error"] or doc["counts"]["gate-failed"]:
        raise typer.Exit(1)
