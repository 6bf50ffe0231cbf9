#!/usr/bin/env bash
# One GPU call for LoRAs on the CUDA engine (issue 16): build, the selftest with the LoRA cases (each fixture LoRA on
# the transformer case against diffusers, a set of all, unload restoring the base bit for bit, typed refusals, a
# LoRA generation replayed from a CUDA graph) in f32, bf16 and fp8 (fp8 rows informational), the LoRA protocol test
# (load over one and several frames, per-job sets, interleaved jobs, unload under a live job, refusals) in f32 and
# bf16, the BFL Control protocol test (tests/protocol_control_test.py: control LoRA with widened x_embedder, biases and
# norm replacements, a control job against the ONNX pipeline's latents, typed refusals, unload restoring the base bit
# for bit) in f32 and bf16, then the LoRA overhead benchmark (synthetic FLUX.1-dev size, 1024x1024, ranks 16/64/256, bf16 and fp8).
# At most 4 files under $OUT: summary.txt, build.log, selftest.txt, protocol.txt.
#   bash engines/cuda/scripts/device-lora.sh [fixtures dir] [--no-bench]
# The fixtures dir comes from `npx tsx engines/cuda/scripts/prepare-fixtures.ts test/fixtures/flux-tiny-reference
# <dir>` (default .device-carry/edit-fixtures, carried to the device; it must hold lora/); the model is the
# repository's models/flux-tiny.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)          # engines/cuda
ROOT=$(cd "$HERE/../.." && pwd)                 # the repository
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
FIX=$(cd "${1:-$ROOT/.device-carry/edit-fixtures}" && pwd) || { echo "no fixtures dir"; exit 1; }
BENCH=1
[[ ${2:-} == --no-bench ]] && BENCH=0
[[ -f $FIX/lora/lora_index.json ]] || { echo "no $FIX/lora: run prepare-fixtures.ts here first"; exit 1; }
MODEL=$ROOT/models/flux-tiny
LOG=$OUT/summary.txt
source "$(dirname "$0")/device-common.sh"
build_engine || exit 1
rc=0
ST=$OUT/selftest.txt
say "selftest f32 + bf16 + fp8 (fp8 informational), LoRA cases included"
timeout 170 "$ENGINE" --selftest "$FIX" "$MODEL" all >"$ST" 2>&1 || rc=1
grep -E '"case":"lora|FAIL|"error"|required cases|\[selftest\].*LoRA' "$ST" | head -80
PT=$OUT/protocol.txt
say "LoRA protocol test (f32, bf16)"
for p in f32 bf16; do
  timeout 90 python3 "$HERE/tests/protocol_lora_test.py" "$ENGINE" "$FIX" "$MODEL" $p >>"$PT" 2>&1 || rc=1
done
say "BFL Control protocol test (f32, bf16)"
if [[ -f $FIX/lora/control/control_case.json ]]; then
  for p in f32 bf16; do
    timeout 90 python3 "$HERE/tests/protocol_control_test.py" "$ENGINE" "$FIX" "$MODEL" $p >>"$PT" 2>&1 || rc=1
  done
else
  echo "no $FIX/lora/control: run prepare-fixtures.ts again (BFL Control case)" | tee -a "$PT"
  rc=1
fi
grep -E '"pass": false|passed|Error|error|\[lora\]|rel err' "$PT" | head -40
if [[ $BENCH == 1 ]]; then
  say "LoRA overhead (synthetic FLUX.1-dev, 1024x1024, ranks 16/64/256, every Linear)"
  timeout 240 "$ENGINE" --bench-lora --size 1024 --steps 6 --ranks 16,64,256 --precisions bf16,fp8 \
    --out /tmp/fq-bench-lora 2>&1 | tail -12 || rc=1
fi
say "done rc=$rc"
exit $rc
