#!/bin/bash
# resnet50 (torchvision, random weights), 64 calibration / 512 validation random images at 3x64x64, code = main snapshot
cd /tmp/r50c
export PYTHONPATH=/tmp/r50c/code
COMMON="torchvision:resnet50 --input-size 64 --calib calib.npz --val val.npz --layout nhwc --preset imagenet --size 64 --resize 64 --latency-batch 1 --quiet"
uptime > run.log
/usr/bin/time -f "%e s wall %U s user %S s sys" python -P -m rescompile.cli build $COMMON --out plain > plain.log 2>&1
uptime >> run.log
/usr/bin/time -f "%e s wall %U s user %S s sys" python -P -m rescompile.cli build $COMMON --min-cosine 0.99999 --auto-fallback 2 --out search > search.log 2>&1
uptime >> run.log
