#!/usr/bin/env bash
# One GPU call for editing on the CUDA engine (issue 18): build, then the selftest in f32 and bf16 (every earlier case
# plus the edit cases: the VAE encoder against diffusers' image latents, img2img, inpainting and true CFG through
# every step to the image; diffusers folders, then the BFL single files through the load spec), the edit protocol
# test (encode, inpaint, img2img, true CFG, error frames) and the existing protocol test, in f32 and bf16. At most 4
# files under $OUT: summary.txt, build.log, selftest.txt, protocol.txt.
#   bash engines/cuda/scripts/device-edit.sh [fixtures dir]
# The fixtures dir comes from `npx tsx engines/cuda/scripts/prepare-fixtures.ts test/fixtures/flux-tiny-reference
# <dir>` (default .device-carry/edit-fixtures, carried to the device); the model is the repository's models/flux-tiny.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)          # engines/cuda
ROOT=$(cd "$HERE/../.." && pwd)                 # the repository
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
FIX=$(cd "${1:-$ROOT/.device-carry/edit-fixtures}" && pwd) || { echo "no fixtures dir"; exit 1; }
[[ -f $FIX/edit/edit_index.json ]] || { echo "no $FIX/edit: run prepare-fixtures.ts here first"; exit 1; }
MODEL=$ROOT/models/flux-tiny
LOG=$OUT/summary.txt
source "$(dirname "$0")/device-common.sh"
build_engine || exit 1
rc=0
ST=$OUT/selftest.txt
say "selftest f32 + bf16 (diffusers folders), edit cases included"
timeout 150 "$ENGINE" --selftest "$FIX" "$MODEL" both >"$ST" 2>&1 || rc=1
grep -E '"case":"edit|FAIL|error|required cases' "$ST" | head -60
grep -E "\[selftest\].*edit.*replayed" "$ST" | head -12
say "selftest f32 + bf16, BFL single files through the load spec (the encoder through the BFL name map)"
timeout 150 "$ENGINE" --selftest "$FIX" "$FIX/flux-tiny-bfl/load-spec.json" both >>"$ST" 2>&1 || rc=1
grep -E "^edit\..*(FAIL|PASS)|required cases" "$ST" | tail -30
PT=$OUT/protocol.txt
say "protocol tests (edit, then the text-to-image one)"
for p in f32 bf16; do
  timeout 120 python3 "$HERE/tests/protocol_edit_test.py" "$ENGINE" "$FIX" "$MODEL" $p >>"$PT" 2>&1 || rc=1
  timeout 120 python3 "$HERE/tests/protocol_test.py" "$ENGINE" "$FIX" "$MODEL" $p >>"$PT" 2>&1 || rc=1
done
grep -E '"pass": false|passed|Error|error_frames|"case": "protocol pipeline' "$PT" | head -30
say "done rc=$rc"
exit $rc
