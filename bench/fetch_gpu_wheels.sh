#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has torch, triton, onnx, onnxruntime,
# safetensors, transformers, pytest, hypothesis, imageio; it has no internet). They land in
# .whl/ (git-ignored), which the device call carries. Then, on the device:
#   pip install -q --no-index --no-deps .whl/*.whl && pip install -q --no-deps --no-build-isolation -e . && bash bench/gpu_lane.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# diffusers: the VAE and reference models; pybind11: builds the native host (no build
# isolation there); onnxscript + onnx_ir: the dynamo ONNX exporter. (av, for mp4 output,
# is 35 MB: add it only when the lane writes videos.)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .whl diffusers pybind11 onnxscript onnx_ir
ls -la .whl
du -sh .whl
