"""``rescompile inspect``: the block map of an ONNX model and, with an INT8 model, the proof it keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from rescompile.commands import options as o
from rescompile.commands.base import app, console, warn
from rescompile.quantize.registry import policy_help


def block_table(blocks: list[Any], title: str) -> Table:
    """The block map as a rich table: one row per residual Add (block inputs are in --json)."""
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("residual Add", overflow="fold")
    t.add_column("main branch")
    t.add_column("last Conv of main branch", overflow="fold")
    t.add_column("shortcut")
    t.add_column("then")
    for i, b in enumerate(blocks):
        short = b.shortcut_kind if not b.shortcut_ops else f"{b.shortcut_kind} ({'-'.join(b.shortcut_ops)})"
        t.add_row(
            str(i),
            escape(b.add),
            "-".join(b.main_ops) or b.main_producer_op,
            escape(b.main_conv or b.main_producer),
            escape(short),
            b.follower or "-",
        )
    return t


def proof_table(report: Any) -> Table:
    """The verification result as a rich table: one row per rule."""
    from rescompile.graph.verify import RULES

    t = Table(title=f"proof ({report.policy} policy): {'PASS' if report.ok else 'FAIL'}", title_justify="left")
    t.add_column("rule")
    t.add_column("checked", justify="right")
    t.add_column("violations", justify="right")
    t.add_column("what it proves")
    for rule, n in report.checks.items():
        bad = len(report.failed(rule))
        t.add_row(rule, str(n), f"[red]{bad}[/]" if bad else "0", RULES[rule])
    return t


@app.command(
    epilog="Examples:\n\n  rescompile inspect model.onnx --json blocks.json\n\n"
    "  rescompile inspect model.simplified.onnx --int8 model.int8.onnx --plan qdq_plan.json\n\n"
    "  rescompile inspect build/demo   (a build folder: its simplified model, INT8 model and plan)",
)
def inspect(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model, or a build folder.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the block map (and the proof) as JSON.")] = None,
    int8: Annotated[Path | None, typer.Option("--int8", help="Q/DQ model made from MODEL: prove it keeps the topology.")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="qdq_plan.json the INT8 model was made with.")] = None,
    policy: Annotated[str, typer.Option(help=policy_help("the plan's, else detected from the Q/DQ"))] = "auto",
    no_verify_hashes: o.NoVerifyOpt = False,
) -> None:
    """Print every residual Add (main branch, shortcut, what follows) and, with --int8, the proof.

    Files of a build folder are checked against its manifest.json first (exit 2 on a mismatch);
    a build whose gates failed is inspected too (that is how to look into it).
    Exits 1 when the INT8 model breaks a rule (each violation names the node and the rule).
    """
    from rescompile.buildfolder import INT8_ONNX, QDQ_PLAN, SIMPLIFIED_ONNX, open_build
    from rescompile.errors import UsageError
    from rescompile.graph.topology import block_map, find_residual_blocks
    from rescompile.io import write_json
    from rescompile.pipeline.stages import proof_error
    from rescompile.quantize.policy import QuantPlan
    from rescompile.quantize.registry import get_policy
    from rescompile.quantize.verify import verify_int8
    from rescompile.readers import read_onnx

    fp32_path = _checked(model, no_verify_hashes) or model
    int8_path, plan_path = _checked(int8, no_verify_hashes), _checked(plan, no_verify_hashes)
    if model.is_dir():
        build = open_build(model, verify=not no_verify_hashes, allow_failed=True)
        for line in build.warnings(failed=False):  # inspecting a failed build needs no override: a note below
            warn(line)
        if build.passed is False:
            console.print(
                f"note: {escape(str(model))} is a build whose gates failed ({', '.join(build.failed_gates) or 'see its report'})",
                highlight=False,
            )
        fp32_path = build.file(SIMPLIFIED_ONNX)
        if int8_path is None and build.has(INT8_ONNX):
            int8_path = build.file(INT8_ONNX)
        if plan_path is None and build.has(QDQ_PLAN):
            plan_path = build.file(QDQ_PLAN)
    if policy != "auto":
        get_policy(policy)  # an unknown name: exit 2 listing the registered ones
    fp32 = read_onnx(fp32_path)
    blocks = find_residual_blocks(fp32)
    doc: dict[str, Any] = {"model": str(fp32_path), "block_map": block_map(fp32)}
    if blocks:
        console.print(block_table(blocks, f"{fp32_path}: {len(blocks)} residual Adds"))
    else:
        console.print(f"{escape(str(fp32_path))}: no residual Add (no block map)", highlight=False)
    report = None
    if int8_path is not None:
        quant_plan = None
        if plan_path is not None:
            quant_plan = QuantPlan.read(plan_path)
            if policy != "auto" and policy != quant_plan.policy:
                raise UsageError(f"--policy {policy} contradicts the plan's policy {quant_plan.policy}")
        report = verify_int8(fp32, read_onnx(int8_path), quant_plan, None if policy == "auto" else policy)
        doc["int8"] = str(int8_path)
        doc["proof"] = report.to_dict()
        console.print(proof_table(report))
        for v in report.violations[:30]:
            console.print(f"[red]✗[/] {escape(str(v))}", highlight=False)
        if len(report.violations) > 30:
            console.print(f"... and {len(report.violations) - 30} more (all of them in --json)")
    if json_out is not None:
        write_json(json_out, doc)
        console.print(f"wrote {escape(str(json_out))}", highlight=False)
    error = None if report is None else proof_error(report, str(int8_path))
    if error is not None:
        raise error


def _checked(path: Path | None, no_verify_hashes: bool) -> Path | None:
    """A file of a build folder, checked against its manifest (a failed build is fine); any other file as given."""
    from rescompile.buildfolder import build_of

    build = build_of(path, verify=not no_verify_hashes, allow_failed=True) if path is not None else None
    return build.file(path.name) if build is not None and path is not None else path
