#!/usr/bin/env bash
# One-shot check of rescompile's TensorRT layer on a machine with an NVIDIA GPU and TensorRT.
#
# Run once from the repository root (after `pip install -e ".[dev,tensorrt]"`, or on Jetson
# `pip install -e ".[dev,jetpack6]"` with JetPack's TensorRT):
#     bash benchmarks/gpu_smoke.sh [OUT_DIR]          # default OUT_DIR: gpu-smoke-<host>-<date>
#     BUNDLE=model.rcb bash benchmarks/gpu_smoke.sh   # from a bundle: no torch/onnxsim needed (docker/Dockerfile.jetson)
#     ONNX=model.int8.onnx bash benchmarks/gpu_smoke.sh
#     TARGET=jetson-agx-orin DLA_CORE=0 BUNDLE=model.rcb bash benchmarks/gpu_smoke.sh   # also a DLA build
# It takes the INT8 ONNX from BUNDLE or ONNX (else builds the demo model on the CPU, which needs
# torch), records the Jetson power state (nvpmodel -q, jetson_clocks --show, GPU clock), builds the
# engine for this GPU (and for DLA_CORE), prints the residual-Add fusion and DLA tables, deploys the
# bundle (accuracy against its FP32 logits), times the plan with rescompile's runner (alternating
# shapes, CUDA graphs) and with trtexec on the *same* plan, runs the gpu-marked tests when torch is
# present, and writes one report OUT_DIR/smoke.json plus OUT_DIR.tar.gz: send that file back.
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

power() {  # the Jetson power state now, as JSON (null elsewhere): read it next to every latency number
  "$PY" -c "import json; from rescompile.engine.jetson import power_state; s = power_state(); print(json.dumps(s.to_dict() if s else None))"
}

say "environment"
date -u; uname -a; nvidia-smi 2>&1 | head -20 || echo "nvidia-smi not found"
[ -f /etc/nv_tegra_release ] && head -1 /etc/nv_tegra_release && cat /proc/device-tree/model 2>/dev/null; echo
git rev-parse HEAD 2>/dev/null || true
cli doctor --json > "$OUT/doctor.json"; cli doctor
power > "$OUT/power_before.json"; cat "$OUT/power_before.json"
# D8: does the installed cuda-python talk to this driver at all? (PyPI aarch64 wheels on L4T are unverified)
"$PY" -c "from cuda.bindings import runtime as r; print('cuda-python cudaGetDeviceCount:', r.cudaGetDeviceCount())" 2>&1 \
  | tee "$OUT/cuda_python_check.txt"

ONNX=${ONNX:-}
if [ -n "${BUNDLE:-}" ]; then
  say "INT8 ONNX from the bundle $BUNDLE (no torch/onnxsim needed)"
  "$PY" - "$BUNDLE" "$OUT/model.int8.onnx" <<'PYEOF'
import shutil, sys, tempfile
from pathlib import Path
from rescompile.deploy.bundle import open_bundle
with tempfile.TemporaryDirectory() as tmp:
    shutil.copyfile(open_bundle(Path(sys.argv[1]), Path(tmp)).file("model.int8.onnx"), sys.argv[2])
PYEOF
  ONNX="$OUT/model.int8.onnx"
elif [ -z "$ONNX" ]; then
  say "demo model -> INT8 ONNX (CPU pipeline; needs torch and onnxsim)"
  cli build --out "$OUT/build" || { echo "build failed (exit $?)"; }
  ONNX="$OUT/build/model.int8.onnx"
fi

say "engine for this GPU (batches $BATCHES); the fusion table and each layer's precision"
cli engine "$ONNX" --target gpu --batch "$BATCHES" --out "$OUT/engine" --timing-cache "$OUT/timing-cache"
echo "engine exit code: $?" | tee "$OUT/engine.exit"
cp "$OUT/engine/model.plan.json" "$OUT/engine/model.plan.layers.json" "$OUT/" 2>/dev/null

if [ -n "${DLA_CORE:-}" ]; then
  say "engine for DLA core $DLA_CORE (target ${TARGET:?TARGET=<jetson target> is needed with DLA_CORE}): DLA/GPU layer counts, DLA gate"
  cli engine "$ONNX" --target "$TARGET" --dla-core "$DLA_CORE" --batch 1 --out "$OUT/engine-dla"
  echo "dla engine exit code: $?" | tee "$OUT/engine-dla.exit"
fi

if [ -n "${BUNDLE:-}" ]; then
  say "deploy the bundle: the engine that runs, validated against the bundled FP32 logits"
  cli deploy "$BUNDLE" --target "${TARGET:-auto}" --out "$OUT/deploy"
  echo "deploy exit code: $?" | tee "$OUT/deploy.exit"
fi

PLAN="$OUT/engine/model.plan"
if [ ! -f "$PLAN" ]; then
  say "no plan was built: see $LOG"; tar czf "$OUT.tar.gz" --exclude='*.onnx' --exclude='*.npz' "$OUT"; echo "send back: $OUT.tar.gz"; exit 1
fi

say "latency: rescompile's runner (pinned host buffers, H2D + compute + D2H), median of 200 runs, with the power state"
"$PY" - "$PLAN" "$BATCHES" > "$OUT/runner_latency.json" <<'PYEOF'
import json, sys, time
import numpy as np
from rescompile.engine.jetson import power_state
from rescompile.runtime.tensorrt_runner import TensorRTRunner
plan, batches = sys.argv[1], [int(b) for b in sys.argv[2].split(",")]
side = json.load(open(plan + ".json"))
chw = side["settings"]["profile"]["opt"][1:]
state = power_state()
out = {"batches": {}, "power": state.to_dict() if state else None, "warnings": state.warnings() if state else []}
with TensorRTRunner(plan) as r:
    out["input"] = r.input
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, *chw), dtype=np.float32)
        for _ in range(20):
            r.infer(x)
        times = []
        for _ in range(200):
            t0 = time.perf_counter(); r.infer(x); times.append((time.perf_counter() - t0) * 1e3)
        out["batches"][b] = {"p50_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                             "shape": [b, *chw]}
    # CUDA graph replayed across alternating shapes A -> B -> A (each shape recaptured or plain, never wrong)
    if len(batches) > 1:
        a, b = batches[0], batches[-1]
        xa = np.random.default_rng(1).standard_normal((a, *chw), dtype=np.float32)
        xb = np.random.default_rng(2).standard_normal((b, *chw), dtype=np.float32)
        ref_a, ref_b = r.infer(xa), r.infer(xb)
        r.enable_graph()
        got = [r.infer(x) for x in (xa, xa, xb, xa, xb)]
        out["graph"] = {"info": r.graph_info, "alternating_max_abs_diff": float(max(
            np.abs(g - ref).max() for g, ref in zip(got, (ref_a, ref_a, ref_b, ref_a, ref_b))))}
        r.drop_graph()
after = power_state()
out["power_after"] = after.to_dict() if after else None
for w in out["warnings"]:
    print("warning:", w, file=sys.stderr)
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
  "$PY" - "$ONNX" "$OUT/trtexec.layers.json" <<'PYEOF' | tee "$OUT/trtexec_fusion.txt"
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
if [ -d tests/gpu ] && "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pytest -m gpu tests/gpu -q -rA --junitxml="$OUT/gpu-tests.xml" 2>&1 | tail -40
else
  echo "skipped: no tests/ checkout or no torch in this image (the bundle run above covers deploy)" | tee "$OUT/gpu-tests.skipped"
fi
power > "$OUT/power_after.json"

say "one report: $OUT/smoke.json"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    try:
        return json.loads(p.read_text()) if p.suffix == ".json" else p.read_text().strip()
    except (OSError, ValueError):
        return None
def engine(folder):
    side = load(f"{folder}/model.plan.json")
    if not side:
        return None
    return {k: side.get(k) for k in ("tensorrt_version", "gpu", "residual_fusion", "dla", "rest_typing")} | {
        "layer_precision": (side.get("layer_precision") or {}).get("counts"), "settings": side.get("settings")}
deploy = load("deploy/deploy.json")
report = {
    "doctor": load("doctor.json"), "power_before": load("power_before.json"), "power_after": load("power_after.json"),
    "cuda_python_check": load("cuda_python_check.txt"),
    "engine": engine("engine"), "engine_exit": load("engine.exit"),
    "engine_dla": engine("engine-dla"), "engine_dla_exit": load("engine-dla.exit"),
    "deploy": None if not deploy else {k: deploy.get(k) for k in ("passed", "gates", "agreement", "accuracy", "host")},
    "runner_latency": load("runner_latency.json"), "trtexec_fusion": load("trtexec_fusion.txt"),
    "gpu_tests": "skipped" if (out / "gpu-tests.skipped").exists() else "gpu-tests.xml",
}
(out / "smoke.json").write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps({k: v for k, v in report.items() if k in ("engine_exit", "engine_dla_exit")}, indent=1))
PYEOF

rm -rf "$OUT/timing-cache"
tar czf "$OUT.tar.gz" --exclude='*.onnx' --exclude='*.plan' --exclude='*.npz' "$OUT"
say "done: send back $OUT.tar.gz"
