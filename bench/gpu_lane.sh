#!/usr/bin/env bash
# The whole GPU lane in one call: GPU tests and benchmarks, results under $OUT (at most a
# handful of files: the device tool returns 8). Prepare the wheels here first
# (bash bench/fetch_gpu_wheels.sh), carry .whl, and run on the device from the repo root:
#   pip install -q --no-index --no-deps .whl/*.whl && pip install -q --no-deps --no-build-isolation -e . && bash bench/gpu_lane.sh
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
LOG="$OUT/lane.log"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$LOG"
status=0
python tests/kernels/compile_check.py 90 --json "$OUT/sm90-compile.json" 2>&1 | tee -a "$LOG" || status=1
python -m pytest -m gpu -q -rs tests 2>&1 | tee -a "$LOG" || status=1
python bench/kernel_speed.py --sweep --out "$OUT/kernels.json" 2>&1 | tee -a "$LOG" || status=1
# everything side by side: baseline, every attention backend, every strategy at 1..N GPUs, scaling report
python bench/throughput.py --json "$OUT/throughput.json" --png none 2>&1 | tee -a "$LOG" || status=1
# the issue-6 bar configuration: Wan-1.3B shape, 480x832, 81 frames, 4-step causal rollout, bfloat16,
# compile and CUDA graphs on and off (bars: >= 35 frames/s, >= 1.5x baseline, time to first frame <= 0.5 s)
python bench/throughput.py --model wan2.1-t2v-1.3b --height 480 --width 832 --frames 81 --steps 4 --dtype bf16 \
  --strategy ar --compile --cuda-graphs --no-scaling --png none --json "$OUT/throughput-bar.json" 2>&1 \
  | tee -a "$LOG" || status=1
exit $status
