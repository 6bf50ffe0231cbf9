#!/usr/bin/env bash
# One device call that does two jobs on one GPU (GPU time is scarce; see engines/cuda/NOTES.md):
#   1. flux-mini training (tools/train-mini/run-device.sh, which reads DIT_MINUTES, EXTRA, ... from this environment)
#      and, concurrently, the CUDA engine's correctness checks (CHECKS: device-foundations.sh check, i.e. builds,
#      selftests, protocol tests, compute-sanitizer; device-lora.sh; device-edit.sh), which only need correctness,
#      not the GPU to themselves;
#   2. then, with the GPU idle, the engine benchmark (device-foundations.sh bench: bf16, CUDA graphs off/on, and the
#      FQ_BASELINE engine on the same card).
#   OUT=... FIX=<fixtures dir> FQ_BASELINE=<engines/cuda of the baseline> [DIT_MINUTES=.. EXTRA=..] bash tools/device/train-and-foundations.sh
# Returns 7 files: the model parts (2), eval.json, samples.png, train-logs.tar.gz (loss.csv, train.log,
# samples_512.png), foundations.tar.gz (every log of the engine checks and the benchmark JSON/MD), summary.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?}" "${FIX:?}"
T=/tmp/dev-train F=/tmp/dev-found
rm -rf "$T" "$F" && mkdir -p "$T" "$F"
S=$OUT/summary.txt
echo "== start $(date +%T)" >"$S"
# CHECKS (space-separated, default "foundations"): which engine checks run beside the training, one after another
# in one build folder: foundations (device-foundations.sh check), plans (its precision-plan and calibration tests only), lora (device-lora.sh --no-bench; the fixtures
# need lora/), edit (device-edit.sh; the fixtures need edit/), server (device-run.sh server: the TS GPU checks of
# test/gpu/ and a curl GraphQL generation through `fluxql serve --engine cuda`; needs .device-carry/ from
# engines/cuda/scripts/pack-node.sh in the carry).
(
  for c in ${CHECKS:-foundations}; do
    case $c in
      foundations) OUT=$F bash engines/cuda/scripts/device-foundations.sh check "$FIX" ;;
      plans) OUT=$F/plans bash engines/cuda/scripts/device-foundations.sh plans "$FIX" ;;
      lora) OUT=$F/lora bash engines/cuda/scripts/device-lora.sh "$FIX" --no-bench ;;
      edit) OUT=$F/edit bash engines/cuda/scripts/device-edit.sh "$FIX" ;;
      server) OUT=$F/server bash engines/cuda/scripts/device-run.sh server ;;
      *) echo "unknown check $c" ;;
    esac
  done
) >"$F/check.out" 2>&1 &
CHECK=$!
OUT="$T" bash tools/train-mini/run-device.sh >"$T/run.out" 2>&1
echo "== training rc=$? $(date +%T)" >>"$S"
tail -8 "$T/run.out" >>"$S"
# The model comes back even if a later part runs out of time.
cp "$T"/flux-mini.tar.part-* "$OUT"/ 2>/dev/null
for f in eval.json samples.png; do [[ -f $T/$f ]] && cp "$T/$f" "$OUT/"; done
tar -C "$T" -czf "$OUT/train-logs.tar.gz" $(cd "$T" && ls loss.csv train.log samples_*.png run.out 2>/dev/null)
wait "$CHECK"
echo "== engine checks rc=$? $(date +%T)" >>"$S"
grep -E "^== |FAIL|exit|SUMMARY|passed|error" "$F/check.out" | head -60 >>"$S"
tar -C "$F" -czf "$OUT/foundations.tar.gz" .
# BENCH=0 leaves the benchmark out (when only correctness and the training are wanted).
if [[ ${BENCH:-1} != 0 ]]; then
  OUT=$F bash engines/cuda/scripts/device-foundations.sh bench "$FIX" >"$F/bench.out" 2>&1
  echo "== engine bench rc=$? $(date +%T)" >>"$S"
  grep -vE "^--|^$" "$F/bench.out" | tail -25 >>"$S"
fi
tar -C "$F" -czf "$OUT/foundations.tar.gz" .
echo "== done $(date +%T)" >>"$S"
cat "$S"
