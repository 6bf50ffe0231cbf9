# Sourced by the GPU-machine scripts (device-foundations.sh, device-edit.sh, device-lora.sh): the toolchain paths,
# a summary log, and one build of the engine. Callers set HERE (an engines/cuda folder), OUT and LOG first.
# All of them build into FQ_BUILD (default /tmp/fq-build), so scripts run one after another in one device call
# share an incremental build; don't run two of them at once.
export PATH=/usr/local/cuda/bin:/opt/torch/.venv/bin:$PATH
BUILD=${FQ_BUILD:-/tmp/fq-build}
ENGINE=$BUILD/fluxql-engine
exec > >(tee -a "$LOG") 2>&1
say() { echo "== $* ($(date +%T))"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
# cuDNN and the CUDA libraries come from the PyTorch wheels (nvidia.* packages) on the GPU machine.
CUDNN_DIR=$(python3 -c "import nvidia.cudnn; print(nvidia.cudnn.__path__[0])" 2>/dev/null || true)
NV=$(python3 -c "import nvidia, os; print(nvidia.__path__[0])" 2>/dev/null || true)
if [[ -n $NV ]]; then for d in "$NV"/*/lib; do LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-}; done; export LD_LIBRARY_PATH; fi

# device_build SRC_DIR BUILD_DIR: configure and build (Release, Ninja); appends to $OUT/build.log; prints the errors
# and fails when the build does.
device_build() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFQ_CUDNN_DIR="$CUDNN_DIR" >>"$OUT/build.log" 2>&1 &&
    cmake --build "$2" -j 16 >>"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; return 1; }
}

# build_engine: the engine beside the calling script ($HERE) into $BUILD, announced in the summary.
build_engine() {
  say "build (cuDNN: ${CUDNN_DIR:-none})"
  device_build "$HERE" "$BUILD"
}

# selftest_part FILE SECTIONS PRECISION SECONDS [PATTERN]: the engine's selftest sections (FQ_SELFTEST_ONLY) on
# flux-tiny against $FIX into $OUT/FILE, then its summary line and the lines matching PATTERN, and every failed
# required case. Variables set before the call (FQ_...) reach the engine; a failure sets the caller's rc=1.
selftest_part() {
  local file=$1 sections=$2 precision=$3 limit=$4 pattern=${5:-}
  FQ_SELFTEST_ONLY=$sections timeout -k 5 "$limit" "$ENGINE" --selftest "$FIX" models/flux-tiny "$precision" \
    >"$OUT/$file" 2>&1 || rc=1
  grep -E "required cases${pattern:+|$pattern}" "$OUT/$file" | grep -v '^{' | cut -c1-220
  grep '"pass":false' "$OUT/$file" | grep -v '"info":true' | head
}

# card_line: the card as bench-modes records it (--card): name, driver, max clocks, power limit.
card_line() {
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv | tr '\n' ';'
}
