cd /tmp/eq
for m in resnet_outlier mbv2_outlier bitv2_outlier; do
  for pol in tensorrt onnxruntime; do
    /usr/bin/time -f "%e s" rescompile build $m.onnx --preset fashion-mnist --calib calib.npz --val val.npz --policy $pol --equalize --out out/$m-$pol-eq -q > log-$m-$pol-eq.txt 2>&1; echo "$m $pol eq rc=$?" >> rc.txt
  done
done
for m in resnet_outlier mbv2_outlier bitv2_outlier; do
  /usr/bin/time -f "%e s" rescompile build $m.onnx --preset fashion-mnist --calib calib.npz --val val.npz --policy tensorrt --equalize --max-top1-drop 1 --auto-fallback 8 --out out/$m-tensorrt-eqsearch -q > log-$m-eqsearch.txt 2>&1; echo "$m tensorrt eq+search rc=$?" >> rc.txt
done
# after --equalize learned affine pairs (branch gneq): measured on the 10k test images from the repository root
# PYTHONPATH=. python benchmarks/measure_hard.py bitv2_outlier /tmp/eq/out/bitv2_outlier-tensorrt-eq/model.int8.onnx /tmp/eq/out/bitv2_outlier-onnxruntime-eq/model.int8.onnx /tmp/eq/out/bitv2_outlier-tensorrt-eqsearch/model.int8.onnx

# The onnxruntime rows of "The onnxruntime policy after the u8s8 overflow fix" (branch ortrange): 7-bit weights (O7).
cd /work/wt/ortrange
H=benchmarks/hard_models
O=/tmp/ortrange/after
for m in resnet_outlier mbv2_outlier bitv2_outlier; do
  rescompile build $H/$m.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --equalize --threads 1 --out $O/$m-ort-eq -q
  rescompile build $H/$m.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --equalize --bias-correction --threads 1 --out $O/$m-ort-eq-bc -q
done
rescompile build $H/bitv2_outlier.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --equalize --max-top1-drop 1 --auto-fallback 8 --threads 1 --out $O/bitv2_outlier-ort-eq-search -q
for m in bitv2_plain bitv2_wd mbv2_relu6; do
  rescompile build $H/$m.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --threads 1 --out $O/$m-ort -q
done
# each row: top-1 drop [95% CI], worst class drop, FP MACs on the 10k test images, with benchmarks/peers/measure.py
# (normalize, logits, fp_macs_share) against the FP32 model (a failed build's folder ends in .failed)
# the calibration-method rows (M = percentile | mse | entropy; mse on mbv2/bitv2 only)
for M in percentile mse entropy; do
  for m in resnet_outlier mbv2_outlier bitv2_outlier; do
    rescompile build $H/$m.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --equalize --calib-method $M --threads 1 --out $O/$m-ort-eq-$M -q
    rescompile build $H/$m.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --equalize --bias-correction --calib-method $M --threads 1 --out $O/$m-ort-eq-bc-$M -q
  done
done
for m in bitv2_plain bitv2_wd mbv2_relu6; do
  rescompile build $H/$m.onnx --preset fashion-mnist --calib $H/calib.npz --val $H/val.npz --policy onnxruntime --calib-method entropy --threads 1 --out $O/$m-ort-entropy -q
done
