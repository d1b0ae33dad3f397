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
