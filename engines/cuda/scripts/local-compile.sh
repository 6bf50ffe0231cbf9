#!/usr/bin/env bash
# Compile check of the whole engine on a machine without a GPU (no cuDNN: the cuDNN sources compile to their
# fallback stubs): every source with the local nvcc for sm_90a, objects thrown away. cuBLAS/cuBLASLt headers come
# from Debian's non-free `nvidia-cuda-dev` (CUDA 11.8 headers; the engine uses no newer cuBLASLt API):
#   sed -i 's/^Components: main$/Components: main contrib non-free/' /etc/apt/sources.list.d/debian.sources
#   apt-get update && apt-get install -y --no-install-recommends nvidia-cuda-dev
#   bash engines/cuda/scripts/local-compile.sh [src/file.cu ...]     # default: every source; 2 at a time
# Passing here does not replace the GPU build (device-common.sh build_engine), which links and runs.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ -f /usr/include/cublasLt.h ]] || { echo "no /usr/include/cublasLt.h: install nvidia-cuda-dev (see the header)"; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=(src/*.cpp src/*.cu src/kernels/*.cu)
compile() {  # one source -> $out/<name>.o; prints FAIL and the first errors
  local f=$1 lang=()
  [[ $f == *.cpp ]] && lang=(-x cu)
  nvcc -std=c++17 "${lang[@]}" -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -c "$f" \
    -o "$2/$(basename "$f").o" 2>"$2/$(basename "$f").err" || { echo "FAIL $f"; grep -m8 -E "error" "$2/$(basename "$f").err"; }
}
export -f compile
printf "%s\n" "${files[@]}" | xargs -P 2 -I{} bash -c 'compile "$@"' _ {} "$out" | tee "$out/failures"
if [[ -s $out/failures ]]; then echo "local-compile: failures above"; exit 1; fi
echo "local-compile: ${#files[@]} sources compiled"
