"""Fusion verdicts of the layer-information parser on NVIDIA-published engine-inspector JSON, before and after.

For every published dump in tests/fixtures/layerinfo/ (sources named inside each file) and every
variant derived from it (tests/layerinfo_fixtures.py: the 11.x schema, reformat layers, no readable
format), count the residual-Add statuses that ``check_residual_fusion`` gives with this checkout's
``rescompile/engine/layerinfo.py`` ("after") and with the one at ``--before`` ("before", default:
the commit this work started from).

    python benchmarks/layerinfo_verdicts.py            # writes benchmarks/results/layerinfo_verdicts.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's rescompile and the shared fixtures

import layerinfo_fixtures as fx  # noqa: E402

from rescompile.engine import layerinfo as after  # noqa: E402

BEFORE = "868b2e2"  # main when issue 14's work started


def module_at(commit: str) -> Any:
    """``rescompile/engine/layerinfo.py`` as it was at ``commit``, loaded as a module."""
    src = subprocess.run(
        ["git", "show", f"{commit}:rescompile/engine/layerinfo.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    mod = types.ModuleType(f"layerinfo_{commit}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"layerinfo@{commit}", "exec"), mod.__dict__)  # noqa: S102 - our own file from git
    return mod


def counts(mod: Any, doc: dict[str, Any]) -> str:
    c = Counter(a.status for a in mod.check_residual_fusion(doc, fx.blocks(doc)).adds)
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "layerinfo_verdicts.md")
    args = ap.parse_args()
    before = module_at(args.before)
    rows = ["| dump | Adds | before | after |", "|---|---|---|---|"]
    for label, doc in fx.variants():
        rows.append(f"| {label} | {len(doc['_residual_adds'])} | {counts(before, doc)} | {counts(after, doc)} |")
    sources = [
        f"- `{n}`: {fx.load(n)['_source']['repo']} `{fx.load(n)['_source']['path']}` @ {fx.load(n)['_source']['commit'][:12]}"
        for n in fx.PUBLISHED
    ]
    text = "\n".join(
        [
            "# Residual-Add fusion verdicts on NVIDIA-published engine-inspector JSON",
            "",
            f"Command: `python benchmarks/layerinfo_verdicts.py` (before = rescompile/engine/layerinfo.py at "
            f"{args.before}; after = this checkout).",
            "",
            "Published dumps (TensorRT 8.x schema, trimmed; expected: every Add fused-int8):",
            *sources,
            "",
            "Rows marked *derived* rewrite a published dump by one documented change (tests/layerinfo_fixtures.py); "
            "no published TensorRT 11.x dump was found. Expected: fused-int8 for the 11.x schema and the reformat "
            "variant, unknown (never fused-float) when no format is readable.",
            "",
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
