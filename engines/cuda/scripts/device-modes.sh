#!/usr/bin/env bash
# GPU calls for the CUDA modes benchmark (issue 15; LoRA rows for issue 16): `fluxql-engine --bench-modes` on one
# engine loaded bf16 + plan fp8 (synthetic FLUX.1-dev size, 1024x1024, 28 steps, warm-up + mean of ITERS). The rows
# do not fit one 600 s call, so two parts, each its own device call (run them with the GPU to itself):
#   a: batch 1, modes original, XL, S, S+cache; then batch 4, S and S+cache (~8 minutes with the build)
#   b: batch 4, original and XL; LoRA ranks 16/64/256 on original and S, batch 1 (~7-8 minutes)
#   p: batch 1, the planned configurations as measured on flux-mini (bench/results/cuda-quality-flux-mini-h100.md):
#      original, XL, L = bf16 + LPAT, M = fp8 + MPAT, S = fp8 + SPAT (each its own forced pattern; ~4-5 minutes)
#   p4: the same L, M, S at batch 4 (~6 minutes)
#   s: S beside the fp8all preset with and without S's pattern (and SPAT2, 2 cached in a row, when given; ~4 minutes)
#   OUT=$OUT [PATTERN=FFCFC...] [ITERS=10] bash engines/cuda/scripts/device-modes.sh a|b
# PATTERN: the S+cache forced schedule (F full / C cached per step), the one the step cache yields on flux-mini
# (empty: the S rule's upper bound F C F C ..., labelled so in the results). Writes under $OUT: summary.txt,
# build.log, modes-<run>.{json,err} and clocks-<run>.csv (nvidia-smi every second during the run). Back here:
#   python3 engines/cuda/scripts/modes-report.py <dir with every part's files> bench/results/cuda-modes-h100
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PART=${1:-a}
ITERS=${ITERS:-10}
PATTERN=${PATTERN:-}
LOG=$OUT/summary.txt
source "$(dirname "$0")/device-common.sh"
build_engine || exit 1
CARD=$(card_line)
rc=0
# modes_run NAME TIMEOUT ARGS...: one engine run, nvidia-smi sampling its clocks and power beside it.
modes_run() {
  local name=$1 limit=$2
  shift 2
  say "bench-modes $name: $*"
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader,nounits \
    -lms 1000 >"$OUT/clocks-$name.csv" 2>/dev/null &
  local smi=$!
  timeout "$limit" "$ENGINE" --bench-modes --size 1024 --steps 28 --iters "$ITERS" --card "$CARD" \
    ${PATTERN:+--cache-pattern "$PATTERN"} --out "$OUT/modes-$name" "$@" >/dev/null 2>"$OUT/modes-$name.err" || rc=1
  kill "$smi" 2>/dev/null
  # The .md is rebuilt by modes-report.py from the JSON: dropping it keeps part a (two runs) at the device tool's
  # 8 returned files (session 13 lost part a's batch-4 JSON to that limit).
  rm -f "$OUT/modes-$name.md"
  grep -E "bench-modes|bench-lora|floor" "$OUT/modes-$name.err" | tail -20
}
case $PART in
  a)
    modes_run b1 250 --batches 1 --modes original,XL,S,S+cache
    modes_run b4s 300 --batches 4 --modes S,S+cache
    ;;
  a1) modes_run b1 250 --batches 1 --modes original,XL,S,S+cache ;;  # part a's batch-1 rows alone (a shorter call)
  b) modes_run b4base 550 --batches 4 --modes original,XL --lora-ranks 16,64,256 ;;
  p)
    # flux-mini's patterns (session 15): threshold 0.1 -> 17.9 full steps (42.1 dB with fp8), 0.2 -> 15 (38.1 dB).
    LPAT=${LPAT:-FFFFFFCFCFCFCFCFCFCFCFCFCFFF} MPAT=${MPAT:-FFFFFFCFCFCFCFCFCFCFCFCFCFFF}
    SPAT=${SPAT:-FFCFCFCFCFCFCFCFCFCFCFCFCFCF}
    modes_run b1p 400 --batches 1 --modes "original,XL,L=base/$LPAT,M=fp8/$MPAT,S=fp8/$SPAT" ;;
  p4)
    # part p's planned L, M, S at batch 4 (issue 15 asks for batch 1 and 4 per mode; ~6 minutes).
    LPAT=${LPAT:-FFFFFFCFCFCFCFCFCFCFCFCFCFFF} MPAT=${MPAT:-FFFFFFCFCFCFCFCFCFCFCFCFCFFF}
    SPAT=${SPAT:-FFCFCFCFCFCFCFCFCFCFCFCFCFCF}
    modes_run b4p 550 --batches 4 --modes "L=base/$LPAT,M=fp8/$MPAT,S=fp8/$SPAT" ;;
  s)
    # S's way under 1.5 s (session 16: 1.663 s with the fp8 preset and 15 full steps): the fp8all preset (also the
    # out-projections, MLP-out and single proj_out in fp8) with and without S's pattern, beside S; then SPAT2 (a
    # pattern with 2 cached steps in a row, from cuda-quality.py --max-consecutive 2) when given.
    SPAT=${SPAT:-FFCFCFCFCFCFCFCFCFCFCFCFCFCF}
    modes_run b1s 400 --batches 1 --modes "S=fp8/$SPAT,Sall=fp8all,Sall+cache=fp8all/$SPAT${SPAT2:+,S2=fp8/$SPAT2,Sall2=fp8all/$SPAT2}" ;;
  *) echo "part a, a1, b, p, p4 or s"; exit 2 ;;
esac
say "done rc=$rc"
exit $rc
