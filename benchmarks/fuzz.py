"""Long fuzzing run of every parser the CLI exposes (the same targets as tests/integration/test_fuzz_parsers.py).

For ``--minutes`` in total, round-robin over the targets: each round draws ``--batch`` inputs per
target from its hypothesis strategies and checks the contract of tests/fuzzing.py — the library
call returns or raises a RescompileError; the CLI (every ``--cli-every``-th input) exits 0-3 with no
traceback, one error line, and nothing half-written. Failures are recorded (exception, where it
was raised, the input saved under --failures), never stop the run.

Run it under nice on a shared machine:
    nice python benchmarks/fuzz.py --minutes 30
Results: benchmarks/results/fuzz.json and fuzz.md (cases per parser and their outcomes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rescompile and the shared harness (tests/fuzzing.py)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import fuzzing  # noqa: E402


def where(exc: BaseException) -> str:
    """``ExceptionType at file:line`` of the innermost rescompile frame (the bug's address)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "rescompile" in f.filename and "tests/" not in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(f.filename).name}:{f.lineno}"


def run_round(target: fuzzing.Target, n: int, cli_every: int, work: Path, seed: int, stats: dict[str, Any], failures_dir: Path) -> None:
    counter = {"i": 0}

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[__import__("hypothesis").Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        payload = data.draw(target.strategy)
        counter["i"] += 1
        stats["cases"] += 1
        try:
            stats["library"][fuzzing.check_library(target, payload, work)] += 1
        except Exception as exc:  # a fuzz failure: record, keep going
            key = "library " + where(exc)
            _record(stats, key, payload, failures_dir, target, exc)
        if counter["i"] % cli_every == 0:
            try:
                stats["cli"][str(fuzzing.check_cli(target, payload, work))] += 1
            except AssertionError as exc:
                _record(stats, "cli " + str(exc).splitlines()[0][:80], payload, failures_dir, target, exc)
            except Exception as exc:
                _record(stats, "cli " + where(exc), payload, failures_dir, target, exc)

    run()


def _record(stats: dict[str, Any], key: str, payload: bytes, failures_dir: Path, target: fuzzing.Target, exc: BaseException) -> None:
    stats["failures"][key] += 1
    if stats["failures"][key] == 1:
        failures_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{target.name}-{len(stats['failures'])}"
        (failures_dir / f"{stem}{target.suffix}").write_bytes(payload)
        (failures_dir / f"{stem}.txt").write_text(key + "\n\n" + "".join(traceback.format_exception(exc))[-4000:])


def render(runs: dict[str, Any]) -> str:
    lines = [
        "# Fuzzing every parser the CLI exposes",
        "",
        "Each case is one generated input (hostile bytes or structurally valid but wrong content, see tests/fuzzing.py).",
        "*library*: the parser's own function (and the step that uses its result) returned (`ok`) or raised a",
        "RescompileError with that exit code; *CLI*: every few cases the same input also went through the real command",
        "(exit code counted; no traceback, one error line, nothing left in the output folder). A failure is anything else.",
    ]
    for label, doc in runs.items():
        lines += [
            "",
            f"## {label}",
            "",
            f"`{doc['command']}` at commit {doc['commit']} on {doc['date']} ({doc['environment']['cpu']}, "
            f"{doc['environment']['cores']} cores shared with other jobs): {doc['minutes_run']:.1f} minutes, "
            f"{doc['total_cases']} cases, {doc['total_cli']} of them also through the CLI.",
            "",
            "| parser | cases | library outcomes | CLI runs: exit codes | failures |",
            "|---|---:|---|---|---|",
        ]
        for name, s in doc["targets"].items():
            lib = ", ".join(f"{k}: {v}" for k, v in sorted(s["library"].items()))
            cli = ", ".join(f"exit {k}: {v}" for k, v in sorted(s["cli"].items()))
            fails = "; ".join(f"{k} ({v})" for k, v in s["failures"].items()) or "none"
            lines.append(f"| {name} | {s['cases']} | {lib} | {cli} | {fails} |")
        if doc.get("note"):
            lines += ["", doc["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=20, help="inputs per target per round")
    ap.add_argument("--cli-every", type=int, default=5, help="run the CLI on every N-th input")
    ap.add_argument("--only", default="", help="comma-separated target names")
    ap.add_argument("--label", default="run", help="name of this run in fuzz.json/fuzz.md (runs of other labels are kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--failures", type=Path, default=Path("/tmp/rescompile-fuzz-failures"))
    args = ap.parse_args()

    work_root = fuzzing.fresh_workdir()
    build = fuzzing.make_build(work_root / "seed")
    targets = [t for t in fuzzing.targets(build) if not args.only or t.name in args.only.split(",")]
    stats = {t.name: {"cases": 0, "library": Counter(), "cli": Counter(), "failures": Counter()} for t in targets}
    start, rounds = time.monotonic(), 0
    shutil.rmtree(args.failures, ignore_errors=True)
    try:
        while time.monotonic() - start < args.minutes * 60:
            for t in targets:
                run_round(t, args.batch, args.cli_every, work_root / "w", rounds, stats[t.name], args.failures)
                if time.monotonic() - start >= args.minutes * 60:
                    break
            rounds += 1
            total = sum(s["cases"] for s in stats.values())
            fails = sum(sum(s["failures"].values()) for s in stats.values())
            print(f"round {rounds}: {total} cases, {fails} failures, {(time.monotonic() - start) / 60:.1f} min", flush=True)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    doc = {
        "command": "nice python benchmarks/fuzz.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "environment": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()},
        "minutes_run": (time.monotonic() - start) / 60,
        "total_cases": sum(s["cases"] for s in stats.values()),
        "targets": {
            n: {"cases": s["cases"], "library": dict(s["library"]), "cli": dict(s["cli"]), "failures": dict(s["failures"])}
            for n, s in stats.items()
        },
    }
    doc["total_cli"] = sum(sum(t["cli"].values()) for t in doc["targets"].values())
    doc["commit"] = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fuzz.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else {}
    runs[args.label] = doc
    path.write_text(json.dumps({"schema": "rescompile.bench.fuzz/2", "runs": runs}, indent=2) + "\n")
    md = render(runs)
    (args.out / "fuzz.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
