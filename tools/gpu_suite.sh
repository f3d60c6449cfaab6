#!/usr/bin/env bash
# Everything this project measures or checks on a GPU, in one go. Writes logs under OUT (default ./gpu_suite_out)
# and prints the tables at the end.
#
#   bash tools/gpu_suite.sh                     # on a GPU machine with this stack (and mamba-ssm, timm) installed
#
# Steps (each bounded by a timeout, in seconds, overridable through the environment):
#   1. GPU tests: mixer, inference paths, selective scan (tests/test_*_gpu.py)     T_TESTS=300
#   2. classification throughput (benchmark.py): T/S/B, Swin-T, ConvNeXt-T; channels_last, CUDA graph, with and
#      without BatchNorm folding; the Triton scan for T                                 T_CLS=240
#   3. Cascade Mask R-CNN train step (profile_det.py: benchmark_det.py's table, then each row under torch.profiler):
#      Swin-T, T at the published windows, (8,8,56,28) and whole maps (8,8,none,none), S, B; the rows timed in
#      turns (3 rounds)                                                                 T_DET=360
#   3b. the AdamW step alone (benchmark_det.py --det-optim): merged param groups vs mmengine's default
#      constructor                                                                      120
#   3c. what a new input size costs that step (benchmark_new_shapes.py --profile): T, T with CUDA graphs,
#      Swin-T, each in its own process                                                  T_SHAPES=420
#   4. selective-scan kernels (benchmark_scan.py): cuda vs triton at the classification and detection shapes,
#      fp16, eager and from a CUDA graph, host time per call                            T_SCAN=120
#   5. against NVIDIA's own model (benchmark_official.py; needs the mambavision package): classification, the
#      det-scale backbone (eager, Triton, compile=True), the Cascade and UperNet training steps  T_OFFICIAL=600
#   6. training throughput through tools/dist_train.sh (benchmark_train.py), MambaVision-T and Swin-T, 3x
#      config, 200 iterations on 1 GPU (and 2 GPUs where there are two)                  T_TRAIN=600
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_suite_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() {  # name timeout command...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? (log $OUT/$name.log)"
}
nvidia-smi -L 2>/dev/null; date -u
run scan_gpu_tests "${T_TESTS:-300}" $PY -m pytest -q -p no:cacheprovider tests/test_mixer_gpu.py \
  tests/test_inference_paths.py tests/test_selective_scan_gpu.py tests/test_backbone_gpu.py
run cls "${T_CLS:-240}" $PY tools/analysis_tools/benchmark.py --channels-last --cuda-graph
run cls_fused "${T_CLS:-240}" $PY tools/analysis_tools/benchmark.py --channels-last --cuda-graph --fuse-conv-bn
MMMV_SCAN_BACKEND=triton run cls_triton "${T_CLS:-240}" $PY tools/analysis_tools/benchmark.py --channels-last --cuda-graph \
  --fuse-conv-bn --models mambavision_tiny swin_tiny_patch4_window7_224
run det "${T_DET:-360}" $PY tools/analysis_tools/profile_det.py --warmup 5 --runs 10 --det-rounds 3 \
  --det-models swin_t mambavision_t mambavision_t@8,8,56,28 mambavision_t@8,8,none,none mambavision_s mambavision_b
run det_optim 120 $PY tools/analysis_tools/benchmark_det.py --det-optim --warmup 3 --runs 10 \
  --det-models swin_t mambavision_t
run new_shapes "${T_SHAPES:-420}" $PY tools/analysis_tools/benchmark_new_shapes.py --profile --out "$OUT/new_shapes.json"
run scan "${T_SCAN:-120}" $PY tools/analysis_tools/benchmark_scan.py --device cuda --cuda-graph --host-time \
  --shapes 128x160x196 2x160x12544 \
  --dtypes fp16 --backends cuda triton
run official "${T_OFFICIAL:-600}" $PY tools/analysis_tools/benchmark_official.py --archs t s b \
  --ours-kwargs '{"compile": true}' --out "$OUT/official.csv"
GPUS=$($PY -c 'import torch; print(" ".join(str(n) for n in (1, 2) if n <= torch.cuda.device_count()))')
run train "${T_TRAIN:-600}" $PY tools/analysis_tools/benchmark_train.py --configs configs/det/cascade_mambavision_t_3x.py \
  configs/det/cascade_swin_t_3x.py --gpus $GPUS --iters 200 --data-root "$OUT/coco_scale" --out "$OUT/train.json"
for name in scan_gpu_tests cls cls_fused cls_triton det det_optim new_shapes scan official train; do
  echo; echo "### $name"
  grep -E '^\||^device|^ratios|^note|^floor|^warm-up|^(cuda|triton|torch) |passed|failed|error' "$OUT/$name.log" | grep -v -i 'warn' | tail -60
done
