#!/usr/bin/env bash
# Build, test and benchmark the engine on the GPU machine in one call.
#   engines/cuda/scripts/device-run.sh [all|test|bench] [bench args...]
#   engines/cuda/scripts/device-run.sh exec <engine args...>     (build, then run the engine with these arguments)
#   engines/cuda/scripts/device-run.sh server                    (build, then the TypeScript side on the GPU: the
#       checks of test/gpu/ under node:test, and one curl GraphQL generation against `fluxql serve --engine cuda`;
#       needs Node and node_modules carried in .device-carry/, see engines/cuda/README.md)
#   engines/cuda/scripts/device-run.sh compile                   (build, then `fluxql compile --engine cuda` on
#       flux-tiny into a fresh CACHE_DIR, then server-check.sh on that cache: the server must use the stored plans
#       and not calibrate; same .device-carry/ as `server`)
# Expects the fixtures in .device-fixtures/ (engines/cuda/scripts/prepare-fixtures.ts) and writes logs and
# results under $OUT (or ./out when unset).
set -uo pipefail
export PATH=/usr/local/cuda/bin:/opt/torch/.venv/bin:$PATH
cd "$(dirname "$0")/../../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
MODE=${1:-all}
shift || true
FIX=$ROOT/.device-fixtures
MODEL=$ROOT/models/flux-tiny
BUILD=$ROOT/engines/cuda/build

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
# cuDNN ships inside the PyTorch wheels here; its sub-libraries (and nvrtc) are found through LD_LIBRARY_PATH.
CUDNN_DIR=$(python3 -c "import nvidia.cudnn; print(nvidia.cudnn.__path__[0])" 2>/dev/null || true)
NV=$(python3 -c "import nvidia, os; print(nvidia.__path__[0])" 2>/dev/null || true)
if [[ -n $NV ]]; then for d in "$NV"/*/lib; do LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-}; done; export LD_LIBRARY_PATH; fi
echo "cuDNN: ${CUDNN_DIR:-none}"
t0=$(date +%s)
cmake -S engines/cuda -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFQ_CUDNN_DIR="$CUDNN_DIR" >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j 16 >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
ENGINE=$BUILD/fluxql-engine
rc=0
if [[ $MODE == all || $MODE == test ]]; then
  "$ENGINE" --selftest "$FIX" "$MODEL" all >"$OUT/selftest.txt" 2>"$OUT/selftest.err"; r=$?
  [[ $r -ne 0 ]] && rc=$r
  tail -5 "$OUT/selftest.err"
  sed -n '/^case /,$p' "$OUT/selftest.txt"
  grep -E '"error"|skipped|"why"' "$OUT/selftest.txt"
  # The bf16 path again with the engine's own flash kernel instead of cuDNN's.
  FQ_ATTENTION=own "$ENGINE" --selftest "$FIX" "$MODEL" bf16 >"$OUT/selftest-own.txt" 2>&1; r=$?
  [[ $r -ne 0 ]] && rc=$r
  echo "own flash kernel:"; grep -E "transformer_forward|latents|image|failed" "$OUT/selftest-own.txt" | grep -v '^{'
  # The same checks on the BFL single-file layout, loaded through the load spec the server would send.
  "$ENGINE" --selftest "$FIX" "$FIX/flux-tiny-bfl/load-spec.json" both >"$OUT/selftest-bfl.txt" 2>&1; r=$?
  [[ $r -ne 0 ]] && rc=$r
  echo "BFL single files (load spec):"; grep -E "^(clip|t5|transformer|pipeline)|failed" "$OUT/selftest-bfl.txt" | grep -v '^{'
  for p in f32 bf16; do
    python3 engines/cuda/tests/protocol_test.py "$ENGINE" "$FIX" "$MODEL" $p 2>&1 | tail -3 | tee -a "$OUT/protocol.txt"
    [[ ${PIPESTATUS[0]} -ne 0 ]] && rc=1
  done
fi
if [[ $MODE == all && $rc -ne 0 ]]; then
  echo "tests failed (rc=$rc): benchmark skipped"
elif [[ $MODE == all || $MODE == bench ]]; then
  "$ENGINE" --bench --out "$OUT/cuda-h100" "$@" 2>"$OUT/bench.err"; r=$?
  cat "$OUT/bench.err" | tail -8
  [[ $r -ne 0 ]] && rc=$r
fi
if [[ $MODE == exec ]]; then
  "$ENGINE" "$@"; rc=$?
fi
if [[ $MODE == server ]]; then
  # shellcheck disable=SC1091
  source .device-carry/activate.sh || exit 1
  export CUDA_ENGINE_BIN=$ENGINE FLUXQL_GPU_REPORT=$OUT/gpu-report.jsonl
  # The carried Node bundle has no ONNX Runtime native library: ORT's reference images come made (pack-node.sh).
  export FLUXQL_ORT_REFERENCE=$ROOT/.device-carry/ort-reference.json
  node --import tsx --test-reporter=spec test/gpu/run-node.ts 2>&1 | tee "$OUT/gpu-tests.txt"
  r=${PIPESTATUS[0]}; [[ $r -ne 0 ]] && rc=$r
  OUT=$OUT/curl bash engines/cuda/scripts/server-check.sh 2>&1 | tee "$OUT/server-check.txt"
  r=${PIPESTATUS[0]}; [[ $r -ne 0 ]] && rc=$r
  # One tar for the curl check's files: the device tool returns at most 8 files.
  tar -C "$OUT" -czf "$OUT/curl.tar.gz" curl && rm -rf "$OUT/curl"
fi
if [[ $MODE == compile ]]; then
  # shellcheck disable=SC1091
  source .device-carry/activate.sh || exit 1
  export CUDA_ENGINE_BIN=$ENGINE CACHE_DIR=$OUT/compile-cache MODEL_REPO=$MODEL
  rm -rf "$CACHE_DIR"
  node bin/fluxql.js compile --engine cuda --model "$MODEL" >"$OUT/compile.jsonl" 2>"$OUT/compile.log"; r=$?
  tail -3 "$OUT/compile.log"; cat "$OUT/compile.jsonl"
  [[ $r -ne 0 ]] && rc=$r
  # f32 has no fp8 path: L must be refused with the reason (exit 2), not calibrated.
  CUDA_PRECISION=f32 node bin/fluxql.js compile --engine cuda --model "$MODEL" --mode L 2>&1 | tail -1; r=${PIPESTATUS[0]}
  echo "f32 + L exit: $r (expected 2)"; [[ $r -ne 2 ]] && rc=1
  OUT=$OUT/curl bash engines/cuda/scripts/server-check.sh 2>&1 | tee "$OUT/server-check.txt"
  r=${PIPESTATUS[0]}; [[ $r -ne 0 ]] && rc=$r
  grep "cuda planner" "$OUT/curl/server.log" | head -3
  grep -q "cuda planner: using stored plans" "$OUT/curl/server.log" && ! grep -q "cuda planner: calibrating" "$OUT/curl/server.log" ||
    { echo "the server did not use the compiled plans"; rc=1; }
  # One tar for the curl check's files and the manifest: the device tool returns at most 8 files.
  tar -C "$OUT" -czf "$OUT/compile.tar.gz" curl compile-cache && rm -rf "$OUT/curl" "$OUT/compile-cache"
fi
exit $rc
