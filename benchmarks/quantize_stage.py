"""The build's ``quantize`` stage alone, in one process: Q/DQ insertion, the placement proof and the INT8 model and plan
written, on a build folder's own inputs (``model.simplified.onnx``, ``qdq_plan.json``, ``ranges.json``).

    flock /tmp/rescompile-bench.lock python benchmarks/quantize_stage.py /tmp/r50 --repeat 3
    python benchmarks/quantize_stage.py /tmp/r50 --root /tmp/before   # another checkout (git archive main | tar -x -C ...)

Prints the wall seconds of each run, their median, the load average, and whether the INT8 model and the plan written
are the folder's own bytes. ``--cold`` forgets the residual blocks found by the previous run (in a build the plan
stage has already found them). ``--profile`` adds a cProfile of one more run. The rescompile timed is the one of the
checkout this script lives in, or ``--root``'s.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def _run_once(folder: Path, inputs: SimpleNamespace, cold: bool) -> tuple[float, bool]:
    from rescompile.buildfolder import INT8_ONNX, QDQ_PLAN
    from rescompile.graph import topology
    from rescompile.pipeline import stages

    if cold and hasattr(topology, "_blocks"):
        topology._blocks.cache_clear()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        stages.quantize(inputs.simplified, inputs.planned, inputs.calibrated).write(Path(out))
        seconds = time.perf_counter() - start
        same = all((Path(out) / f).read_bytes() == (folder / f).read_bytes() for f in (INT8_ONNX, QDQ_PLAN))
    return seconds, same


def _inputs(folder: Path) -> SimpleNamespace:
    import onnx

    from rescompile.buildfolder import QDQ_PLAN, RANGES, SIMPLIFIED_ONNX
    from rescompile.calibrate.ranges import CalibrationResult
    from rescompile.quantize.policy import QuantPlan

    return SimpleNamespace(
        simplified=SimpleNamespace(model=onnx.load(str(folder / SIMPLIFIED_ONNX))),
        planned=SimpleNamespace(plan=QuantPlan.from_json((folder / QDQ_PLAN).read_text())),
        calibrated=SimpleNamespace(ranges=CalibrationResult.from_json((folder / RANGES).read_text()).ranges),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a build folder")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", type=Path, help="run the rescompile of this checkout (default: the one this script is in)")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(args.root or ROOT))  # before rescompile is imported
    import rescompile

    inputs = _inputs(args.folder)
    runs = [_run_once(args.folder, inputs, args.cold) for _ in range(args.repeat)]
    seconds = [round(s, 3) for s, _ in runs]
    print(f"rescompile {Path(rescompile.__file__).parent}")
    print(f"quantize stage: {seconds} s, median {statistics.median(seconds):.3f} s; load average {os.getloadavg()[0]:.2f}")
    print(f"INT8 model and plan are the folder's bytes: {all(same for _, same in runs)}")
    if args.profile:
        with cProfile.Profile() as prof:
            _run_once(args.folder, inputs, args.cold)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
