#!/usr/bin/env bash
# CI (no GPU, no cuBLAS/cuDNN headers): compile every kernel source that needs only the CUDA runtime headers with
# the local nvcc for sm_90a, so syntax and template errors surface without a GPU. Prints a skip line without nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z $NVCC && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z $NVCC ]]; then
  echo "SKIP engines/cuda ci-compile: nvcc not found (the CUDA engine builds and tests on the GPU machine: scripts/device-run.sh)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for f in src/kernels/*.cu; do
  "$NVCC" -std=c++17 -gencode=arch=compute_90a,code=sm_90a -c "$f" -o "$tmp/$(basename "$f").o"
  n=$((n + 1))
done
for f in src/json.cpp src/safetensors.cpp src/profile.cpp src/fault.cpp src/precision_plan.cpp src/cudnn_attention.cu src/cudnn_conv.cu src/cudnn_handle.cu; do
  "$NVCC" -std=c++17 -x cu -c "$f" -o "$tmp/$(basename "$f").o"
  n=$((n + 1))
done
echo "engines/cuda ci-compile: $n sources compiled for sm_90a with $("$NVCC" --version | tail -1)"
echo "SKIP engines/cuda GPU tests: no GPU here (run engines/cuda/scripts/device-run.sh on the GPU machine)"
