#!/usr/bin/env bash
# One GPU call for the engine foundations (issue 19): build, selftest (f32, bf16, fp8 info; bf16 with the own flash
# kernel; BFL spec), protocol tests, the bf16 benchmark with and without CUDA-graph step replay (1024x1024, 28 steps,
# batch 1, warm-up + mean of 10 each, same loaded engine), then compute-sanitizer memcheck and racecheck on the
# selftest (racecheck twice: with cuDNN's SDPA, and with FQ_ATTENTION=own so that only our kernels are checked).
# Everything is logged under $OUT in few files (the device tool returns at most 8).
#   bash <dir>/engines/cuda/scripts/device-foundations.sh [all|tests|sanitize|check|bench|plans] [fixtures dir]
# tests: build, selftests, protocol, benchmark (plus, when FQ_BASELINE names another engines/cuda source folder, that
# engine's bf16 benchmark on the same card as the baseline); sanitize: build, compute-sanitizer only; all: both.
# check: selftests, protocol and sanitizer without the benchmark (correctness only: it may share the GPU with other
# work); bench: the benchmark and baseline only (run it alone on the GPU); plans: the precision-plan and calibration
# protocol tests and the flux-mini parity check only (a minute or two). Both builds happen in every mode.
# The engine sources are the ones beside this script; the model is the repository's models/flux-tiny.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)          # engines/cuda to build
ROOT=${FQ_ROOT:-$(cd "$HERE/../../../.." && pwd)}  # <repo>/.device-carry/<name>/engines/cuda -> <repo>
[[ -d $ROOT/models/flux-tiny ]] || ROOT=$(cd "$HERE/../.." && pwd)    # or run from the repository itself
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
MODE=${1:-all}
FIX=${2:-$HERE/../../fixtures}
MODEL=$ROOT/models/flux-tiny
LOG=$OUT/summary.txt
source "$(dirname "$0")/device-common.sh"
build_engine || exit 1
rc=0
ST=$OUT/selftest.txt
if [[ -n ${FQ_BASELINE:-} && -d $FQ_BASELINE ]]; then
  say "build baseline $FQ_BASELINE"
  device_build "$FQ_BASELINE" /tmp/fq-base || echo "baseline build failed (see build.log)"
fi
if [[ $MODE == all || $MODE == tests || $MODE == check ]]; then
say "selftest f32 + bf16 + fp8 (diffusers folders)"
"$ENGINE" --selftest "$FIX" "$MODEL" all >"$ST" 2>&1 || rc=1
grep -E "FAIL|error|required cases|replayed|fallbacks|\[selftest\].*(load|attention)" "$ST" | grep -v '^{' | head -40
say "selftest bf16, own flash kernel"
FQ_ATTENTION=own "$ENGINE" --selftest "$FIX" "$MODEL" bf16 >>"$ST" 2>&1 || rc=1
tail -1 "$ST"
say "selftest f32 + bf16, BFL single files through the load spec"
"$ENGINE" --selftest "$FIX" "$FIX/flux-tiny-bfl/load-spec.json" both >>"$ST" 2>&1 || rc=1
tail -1 "$ST"
say "selftest bf16, FQ_DEBUG_SYNC=1 and FQ_GRAPH=0 (eager steps)"
FQ_DEBUG_SYNC=1 FQ_GRAPH=0 "$ENGINE" --selftest "$FIX" "$MODEL" bf16 >>"$ST" 2>&1 || rc=1
tail -1 "$ST"
say "protocol tests"
for p in f32 bf16; do
  python3 "$HERE/tests/protocol_test.py" "$ENGINE" "$FIX" "$MODEL" $p 2>&1 | tail -2 || rc=1
  # Joiners in the running engine batch (issue 16): per-sample schedules, subset decode/release, refusals.
  timeout 180 python3 "$HERE/tests/protocol_join_test.py" "$ENGINE" "$FIX" "$MODEL" $p 2>&1 | grep -E '"pass": false|passed' || rc=1
  # The editing requests (encode, img2img, inpainting, true CFG), when the fixtures carry edit/.
  if [[ -f $FIX/edit/edit_index.json ]]; then
    timeout 120 python3 "$HERE/tests/protocol_edit_test.py" "$ENGINE" "$FIX" "$MODEL" $p 2>&1 | tail -3 || rc=1
    # Step caching (First-Block-Cache) on the same fixtures: threshold 0 bit-identical, a huge one caches.
    if [[ -f $HERE/tests/protocol_step_cache_test.py ]]; then
      timeout 120 python3 "$HERE/tests/protocol_step_cache_test.py" "$ENGINE" "$FIX" "$MODEL" $p 2>&1 | tail -4 || rc=1
    fi
  fi
done
fi
if [[ $MODE == all || $MODE == tests || $MODE == check || $MODE == plans ]]; then
# Per-job precision plans (bf16 engine + plan fp8 vs a bf16 and an fp8 engine, bit for bit; interleaved jobs).
if [[ -f $HERE/tests/protocol_plans_test.py ]]; then
  timeout 180 python3 "$HERE/tests/protocol_plans_test.py" "$ENGINE" "$FIX" "$MODEL" 2>&1 | tail -25 || rc=1
fi
# Per-layer calibration for the planner (issue 15): every transformer Linear's fp8 error and GEMM times, verify, the
# planner's rules as a plan.
if [[ -f $HERE/tests/protocol_calibrate_test.py ]]; then
  timeout 180 python3 "$HERE/tests/protocol_calibrate_test.py" "$ENGINE" "$FIX" "$MODEL" 2>&1 | tail -25 || rc=1
fi
# flux-mini against ONNX Runtime's images (issue 14), when the reference was made here and carried
# (engines/cuda/scripts/flux-mini-reference.ts -> .device-carry/flux-mini-ref.json; FLUX_MINI_REF overrides).
REF=${FLUX_MINI_REF:-$ROOT/.device-carry/flux-mini-ref.json}
if [[ -f $REF && -d $ROOT/models/flux-mini ]]; then
  say "flux-mini parity with ORT (f32 2/255, bf16 12/255, detector)"
  timeout 180 python3 "$HERE/tests/flux_mini_parity_test.py" "$ENGINE" "$REF" "$ROOT/models/flux-mini" 2>&1 | tail -10 || rc=1
fi
fi
if [[ $MODE == all || $MODE == tests || $MODE == bench ]]; then
if [[ $rc -ne 0 ]]; then say "tests failed: benchmark skipped"; else
  say "bench bf16 1024x1024 28 steps batch 1, CUDA graphs off then on"
  "$ENGINE" --bench --batches 1 --iters 10 --precisions bf16 --graphs both --out "$OUT/cuda-h100" 2>"$OUT/bench.err" >/dev/null || rc=1
  grep -E "graphs|floor|batch 1:|tuned|weights" "$OUT/bench.err"
  if [[ -n ${FQ_BASELINE:-} && -d $FQ_BASELINE ]]; then
    say "baseline: $FQ_BASELINE, bf16 batch 1, same card"
    /tmp/fq-base/fluxql-engine --bench --batches 1 --iters 10 --precisions bf16 --out /tmp/fq-base/bench 2>"$OUT/bench-base.err" >/dev/null
    grep -E "batch 1:" "$OUT/bench-base.err"
  fi
fi
fi
SAN=$OUT/sanitizer.txt
if [[ $MODE == all || $MODE == sanitize || $MODE == check ]]; then
# Each sanitizer run gets FQ_SAN_S seconds (default 75), racecheck with the own attention kernel FQ_RACE_OWN_S (180;
# it reached the 32nd of the bf16 selftest's 79 cases in 180 s on an H100: give the whole run a call of its own, ~540); a run cut short
# still lists every error found until then.
say "compute-sanitizer memcheck (selftest bf16)"
timeout "${FQ_SAN_S:-75}" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 "$ENGINE" --selftest "$FIX" "$MODEL" bf16 >"$SAN" 2>&1
echo "memcheck exit $? (124: cut at the time limit)"; grep -cE "^========= (Invalid|Program hit|Uninit)" "$SAN"; grep -E "ERROR SUMMARY|required cases" "$SAN" | tail -3
# racecheck twice on the bf16 selftest. With cuDNN's SDPA (the default) it reports inside cuDNN's generated
# wgmma/TMA kernels, whose asynchronous barriers it does not model (false positives); with FQ_ATTENTION=own the
# attention is the engine's flash kernel, so every report there is about the engine's own kernels (or cuBLAS's) and
# counts. Each run: exit code, report count, how far the selftest got, and the kernels named in the reports.
racecheck() {  # label, time limit (s), extra compute-sanitizer options (one word), environment assignments...
  local label=$1 limit=$2 opts=$3 log=/tmp/fq-racecheck-$1.txt
  shift 3
  say "compute-sanitizer racecheck (selftest bf16, $label, ${limit} s${opts:+, $opts}${*:+, $*})"
  # shellcheck disable=SC2086 # opts is one option=value word or empty
  env "$@" timeout "$limit" compute-sanitizer --tool racecheck $opts --error-exitcode 9 "$ENGINE" --selftest "$FIX" \
    "$MODEL" bf16 >"$log" 2>&1
  local ex=$?
  echo "racecheck $label: exit $ex (124: cut at ${limit} s), $(grep -cE "^========= (Error|Warning): Race" "$log") race reports, last case: $(grep -oE '"case":"[^"]*"' "$log" | tail -1 | cut -d'"' -f4), cases: $(grep -c '"case"' "$log")" >>/tmp/fq-race-summary.txt
  { echo "===== racecheck $label (exit $ex) ====="
    grep -E "RACECHECK SUMMARY|ERROR SUMMARY|required cases" "$log" | tail -3
    # Kernel names of the reports (first access of each; with or without line information), most frequent first.
    grep -E "^========= (Error|Warning): Race reported" "$log" |
      sed -E 's/.* access at //; s/^0x[0-9a-f]+ in [^:]*:[0-9]+://; s/\+0x[0-9a-f]+.*$//; s/ \[[0-9]+ hazards?\]$//' |
      cut -c1-120 | sort | uniq -c | sort -rn | head -8
    cat "$log"; } >>"$SAN"
}
rm -f /tmp/fq-race-summary.txt
racecheck cudnn-sdpa "${FQ_SAN_S:-75}" ""
# To the end of the selftest where the limit allows (racecheck slows kernels down many times). The unit cases of
# cuDNN's attention run in every configuration; session 10's 6 reports here were all theirs, so cuDNN's generated
# kernels are left uninstrumented (kernel-name substring filter) and every remaining report is about ours or cuBLAS's.
# (The selftest's sections as parallel racecheck processes: tools/device/racecheck-sections.sh.)
racecheck own-attention "${FQ_RACE_OWN_S:-180}" "--kernel-name-exclude=kns=cudnn_generated" FQ_ATTENTION=own
say "racecheck summary"
cat /tmp/fq-race-summary.txt
fi
say "done rc=$rc"
exit $rc
