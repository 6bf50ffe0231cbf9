#!/usr/bin/env bash
# GPU call(s) for session 15b (issue 15, mode XL step overhead): the QK-norm + RoPE in-place path (FQ_QKV_INPLACE)
# checked and A/B-timed on one warm card, plus the own-kernel breakdown of --bench (profile.h families).
#   check: build; selftest f32 + bf16 + fp8 with FQ_QKV_INPLACE=1 (every section: units incl. the in-place kernel and
#          packed-q/k/v attention cases, the transformer's scatter-vs-in-place A/B at batch 1 and 2, pipelines, LoRA,
#          edits), then units + transformer + pipeline with FQ_QKV_INPLACE=0 (the old path still passes). ~3-4 min.
#   bench: build (incremental when run after check in the same call); --bench bf16, batch 1, ITERS (10) with
#          FQ_QKV_INPLACE=0, then =1, then =0 again (A B A on the same warm card: the card drifts under its power cap),
#          nvidia-smi clocks beside each. ~6 min.
#   OUT=$OUT bash engines/cuda/scripts/device-xlfuse.sh check [fixtures]   # carry [".device-carry/fixtures"]
#   OUT=$OUT bash engines/cuda/scripts/device-xlfuse.sh bench
# Writes under $OUT: summary.txt, build.log, selftest-inplace{1,0}.txt (check), bench-qkv{0,1,0b}.tar.gz (bench:
# each run's .json, .md, .err and clocks .csv). Read: the "[bench] bf16 batch 1 own kernels ms/step" lines and "mean ... s" of each run.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${FQ_ROOT:-$(cd "$HERE/../../../.." && pwd)}
[[ -d $ROOT/models/flux-tiny ]] || ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PART=${1:-check}
FIX=${2:-$ROOT/.device-carry/fixtures}
MODEL=$ROOT/models/flux-tiny
ITERS=${ITERS:-10}
LOG=$OUT/summary.txt
source "$(dirname "$0")/device-common.sh"
build_engine || exit 1
rc=0
case $PART in
  check)
    say "selftest all, FQ_QKV_INPLACE=1"
    FQ_QKV_INPLACE=1 timeout -k 5 300 "$ENGINE" --selftest "$FIX" "$MODEL" all >"$OUT/selftest-inplace1.txt" 2>&1 || rc=1
    grep -E "FAIL|error|required cases|qkv|qk_norm_rope|packed_qkv|replayed|fallbacks" "$OUT/selftest-inplace1.txt" | head -60
    say "selftest units,transformer,pipeline, FQ_QKV_INPLACE=0"
    FQ_QKV_INPLACE=0 FQ_SELFTEST_ONLY=units,transformer,pipeline timeout -k 5 200 "$ENGINE" --selftest "$FIX" "$MODEL" all \
      >"$OUT/selftest-inplace0.txt" 2>&1 || rc=1
    grep -E "FAIL|error|required cases|qkv|transformer_forward" "$OUT/selftest-inplace0.txt" | head -30
    ;;
  bench)
    # Each run's files go to a scratch folder and come back as one tar per run, made as soon as the run ends (the
    # device tool returns at most 8 files; a call cut at its limit still returns the runs done).
    for run in 0 1 0b; do
      say "bench bf16 b1, FQ_QKV_INPLACE=${run%b}"
      R=/tmp/fq-xl-$run
      rm -rf "$R" && mkdir -p "$R"
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader,nounits \
        -lms 1000 >"$R/clocks-qkv$run.csv" 2>/dev/null &
      smi=$!
      FQ_QKV_INPLACE=${run%b} timeout -k 5 170 "$ENGINE" --bench --batches 1 --iters "$ITERS" --precisions bf16 \
        --out "$R/bench-qkv$run" >/dev/null 2>"$R/bench-qkv$run.err" || rc=1
      kill "$smi" 2>/dev/null
      grep -E "mean|own kernels|floor|batch 1:" "$R/bench-qkv$run.err" | tail -8
      tar -C "$R" -czf "$OUT/bench-qkv$run.tar.gz" .
    done
    ;;
  *) echo "usage: device-xlfuse.sh check|bench"; exit 2 ;;
esac
say "done rc=$rc"
exit $rc
