#!/usr/bin/env bash
# One-shot check of rescompile's TensorRT layer on a machine with an NVIDIA GPU and TensorRT.
#
# Run once from the repository root (after `pip install -e ".[dev,tensorrt]"`, or on Jetson
# `pip install -e ".[dev,jetpack6]"` with JetPack's TensorRT):
#     bash benchmarks/gpu_smoke.sh [OUT_DIR]          # default OUT_DIR: gpu-smoke-<host>-<date>
# It builds the demo model's INT8 ONNX (CPU), builds the engine for this GPU, prints the residual-Add
# fusion table, times the plan with rescompile's runner and with trtexec on the *same* plan, runs
# the gpu-marked tests, and writes everything to OUT_DIR plus OUT_DIR.tar.gz: send that file back.
# Nothing here is timed on a shared machine: close other GPU work first.
set -uo pipefail

OUT=${1:-gpu-smoke-$(hostname -s)-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOG="$OUT/smoke.log"
PY=${PYTHON:-python}
BATCHES=${BATCHES:-1,8,32}
cli() { "$PY" -c "from rescompile.cli import main; main()" "$@"; }  # this checkout's rescompile (run from its root)
say() { echo "== $*" | tee -a "$LOG"; }
exec > >(tee -a "$LOG") 2>&1

say "environment"
date -u; uname -a; nvidia-smi 2>&1 | head -20 || echo "nvidia-smi not found"
[ -f /etc/nv_tegra_release ] && head -1 /etc/nv_tegra_release
git rev-parse HEAD 2>/dev/null || true
cli doctor --json > "$OUT/doctor.json"; cli doctor

say "demo model -> INT8 ONNX (CPU pipeline)"
cli build --out "$OUT/build" || { echo "build failed (exit $?)"; }

say "engine for this GPU (batches $BATCHES); the fusion table"
cli engine "$OUT/build" --target gpu --batch "$BATCHES" --out "$OUT/engine" --timing-cache "$OUT/timing-cache"
echo "engine exit code: $?" | tee "$OUT/engine.exit"
cp "$OUT/engine/model.plan.json" "$OUT/engine/model.plan.layers.json" "$OUT/" 2>/dev/null

PLAN="$OUT/engine/model.plan"
if [ ! -f "$PLAN" ]; then
  say "no plan was built: see $LOG"; tar czf "$OUT.tar.gz" --exclude='*.onnx' --exclude='*.npz' "$OUT"; echo "send back: $OUT.tar.gz"; exit 1
fi

say "latency: rescompile's runner (pinned host buffers, H2D + compute + D2H), median of 200 runs"
"$PY" - "$PLAN" "$BATCHES" > "$OUT/runner_latency.json" <<'PYEOF'
import json, sys, time
import numpy as np
from rescompile.runtime.tensorrt_runner import TensorRTRunner
plan, batches = sys.argv[1], [int(b) for b in sys.argv[2].split(",")]
side = json.load(open(plan + ".json"))
chw = side["settings"]["profile"]["opt"][1:]
r = TensorRTRunner(plan)
out = {"input": r.input, "batches": {}}
for b in batches:
    x = np.random.default_rng(0).standard_normal((b, *chw), dtype=np.float32)
    for _ in range(20):
        r.infer(x)
    times = []
    for _ in range(200):
        t0 = time.perf_counter(); r.infer(x); times.append((time.perf_counter() - t0) * 1e3)
    out["batches"][b] = {"p50_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                         "shape": [b, *chw]}
r.close()
print(json.dumps(out, indent=1))
PYEOF
cat "$OUT/runner_latency.json"

TRTEXEC=$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)
say "latency: trtexec on the same plan ($TRTEXEC)"
if [ -x "$TRTEXEC" ]; then
  INPUT=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['input'])" "$OUT/runner_latency.json")
  for B in ${BATCHES//,/ }; do
    SHAPE=$("$PY" -c "import json,sys; print('x'.join(map(str, json.load(open(sys.argv[1]))['batches'][sys.argv[2]]['shape'])))" "$OUT/runner_latency.json" "$B")
    "$TRTEXEC" --loadEngine="$PLAN" --shapes="$INPUT:$SHAPE" --iterations=200 --warmUp=500 --duration=0 \
      --useSpinWait > "$OUT/trtexec_b$B.log" 2>&1
    echo "batch $B:"; grep -E "Latency: min|GPU Compute Time: min" "$OUT/trtexec_b$B.log" || tail -5 "$OUT/trtexec_b$B.log"
  done
  # Layer info exported by trtexec itself from the same plan (with an inference context), to compare with ours.
  "$TRTEXEC" --loadEngine="$PLAN" --shapes="$INPUT:$SHAPE" --iterations=1 --warmUp=0 --duration=0 \
    --profilingVerbosity=detailed --exportLayerInfo="$OUT/trtexec.layers.json" > "$OUT/trtexec_layerinfo.log" 2>&1
  "$PY" - "$OUT/build/model.int8.onnx" "$OUT/trtexec.layers.json" <<'PYEOF' | tee "$OUT/trtexec_fusion.txt"
import sys, onnx
from rescompile.engine.layerinfo import check_residual_fusion
from rescompile.graph.topology import find_residual_blocks
model = onnx.load(sys.argv[1])
report = check_residual_fusion(open(sys.argv[2]).read(), find_residual_blocks(model),
                               node_order=[n.name for n in model.graph.node])
print("fusion read from trtexec's export:", report.counts())
PYEOF
else
  echo "trtexec not found: only rescompile's numbers" | tee "$OUT/trtexec_missing.txt"
fi

say "gpu-marked tests"
"$PY" -m pytest -m gpu tests/gpu -q -rA --junitxml="$OUT/gpu-tests.xml" 2>&1 | tail -40

rm -rf "$OUT/timing-cache"
tar czf "$OUT.tar.gz" --exclude='*.onnx' --exclude='*.plan' --exclude='*.npz' "$OUT"
say "done: send back $OUT.tar.gz"
