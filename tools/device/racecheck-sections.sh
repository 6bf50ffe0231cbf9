#!/usr/bin/env bash
# The racecheck of the bf16 selftest with the engine's own attention (cuDNN's generated kernels excluded), its
# sections (FQ_SELFTEST_ONLY) as parallel processes, logs straight under $OUT (a call cut at its limit returns them).
#   OUT=$OUT RS=<seconds per section> [PARTS="encoders,transformer edit.img2img edit.inpaint edit.true_cfg"] bash tools/device/racecheck-sections.sh
#   (carry .device-carry/fixtures, or FIX=<fixtures>; PARTS: FQ_SELFTEST_ONLY lists, one process each, default all
#   five; LOG: where the summary goes, default $OUT/summary.txt)
set -uo pipefail
HERE=$PWD/engines/cuda LOG=${LOG:-$OUT/summary.txt} FIX=${FIX:-.device-carry/fixtures}
source engines/cuda/scripts/device-common.sh
build_engine || exit 1
say "racecheck sections in parallel, ${RS}s each"
pids=()
for part in ${PARTS:-units encoders,transformer lora pipeline edit}; do
  FQ_ATTENTION=own FQ_SELFTEST_ONLY=$part timeout -k 5 "$RS" compute-sanitizer --tool racecheck \
    --kernel-name-exclude kns=cudnn_generated --error-exitcode 9 "$ENGINE" --selftest "$FIX" models/flux-tiny bf16 \
    >"$OUT/race-${part//,/_}.txt" 2>&1 &
  pids+=($!)
done
# The sections' pids only: a bare `wait` (bash >= 5.1) also waits for device-common.sh's `tee` process
# substitution, which never ends while this script runs, so the call hung until its limit.
wait "${pids[@]}"
for f in "$OUT"/race-*.txt; do
  echo "$(basename "$f" .txt): $(grep -cE "^========= (Error|Warning): Race" "$f") reports; $(grep -E "RACECHECK SUMMARY|required cases" "$f" | tr '\n' ' ') cases $(grep -c '"case"' "$f"), last: $(grep -oE '"case":"[^"]*"' "$f" | tail -1 | cut -d'"' -f4)"
done
say done
