#!/usr/bin/env bash
# Build, test and benchmark the engine on the GPU machine in one call.
#   engines/cuda/scripts/device-run.sh [all|test|bench] [bench args...]
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
t0=$(date +%s)
cmake -S engines/cuda -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j 16 >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
ENGINE=$BUILD/fluxql-engine
rc=0
if [[ $MODE == all || $MODE == test ]]; then
  "$ENGINE" --selftest "$FIX" "$MODEL" both >"$OUT/selftest.txt" 2>"$OUT/selftest.err"; r=$?
  [[ $r -ne 0 ]] && rc=$r
  tail -5 "$OUT/selftest.err"
  sed -n '/^case /,$p' "$OUT/selftest.txt"
  grep -E '"error"' "$OUT/selftest.txt"
  for p in f32 bf16; do
    python3 engines/cuda/tests/protocol_test.py "$ENGINE" "$FIX" "$MODEL" $p 2>&1 | tail -3 | tee -a "$OUT/protocol.txt"
    [[ ${PIPESTATUS[0]} -ne 0 ]] && rc=1
  done
fi
if [[ $MODE == all || $MODE == bench ]]; then
  "$ENGINE" --bench --out "$OUT/cuda-h100" "$@" 2>"$OUT/bench.err"; r=$?
  cat "$OUT/bench.err" | tail -8
  [[ $r -ne 0 ]] && rc=$r
fi
exit $rc
