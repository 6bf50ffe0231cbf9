#!/usr/bin/env bash
# One device call: the TypeScript GPU checks through `fluxql serve --engine cuda` (device-run.sh server: test/gpu/
# under node:test, then one curl GraphQL generation; needs the Node bundle of pack-node.sh carried in .device-carry/)
# and, concurrently when RACE_PARTS names selftest sections and FIX holds the engine fixtures, the racecheck of those
# sections (device-foundations.sh sanitize with FQ_RACE_PARTS; correctness only, so it may share the GPU).
#   OUT=$OUT [FIX=.device-carry/fixtures RACE_PARTS="lora pipeline"] bash tools/device/server-and-racecheck.sh
# Returns summary.txt, server.tar.gz (every log of the checks) and, with RACE_PARTS, sanitize.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?}"
W=/tmp/dev-server
rm -rf "$W" && mkdir -p "$W/server" "$W/s"
S=$OUT/summary.txt
echo "== start $(date +%T)" >"$S"
SAN=
if [[ -n ${RACE_PARTS:-} && -n ${FIX:-} ]]; then
  # device-run.sh builds into engines/cuda/build, the sanitizer run into /tmp/fq-build: two builds, no shared folder.
  (FQ_SAN_S=${FQ_SAN_S:-1} FQ_RACE_PARTS=$RACE_PARTS FQ_RACE_OWN_S=${FQ_RACE_OWN_S:-420} OUT=$W/s \
    bash engines/cuda/scripts/device-foundations.sh sanitize "$FIX" >"$W/s/run.out" 2>&1) &
  SAN=$!
fi
OUT=$W/server bash engines/cuda/scripts/device-run.sh server >"$W/server/run.out" 2>&1
echo "== server checks rc=$? $(date +%T)" >>"$S"
grep -E "^# (tests|pass|fail|skipped)|^not ok|✖|✔|FAIL|failing|server-check|step events|Error" "$W/server/run.out" |
  head -80 >>"$S"
tar -C "$W" -czf "$OUT/server.tar.gz" server
if [[ -n $SAN ]]; then
  wait "$SAN"
  echo "== sanitize rc=$? $(date +%T)" >>"$S"
  grep -E "^== |exit|race reports|SUMMARY|required cases" "$W/s/run.out" | head -40 >>"$S"
  tar -C "$W" -czf "$OUT/sanitize.tar.gz" s
fi
echo "== done $(date +%T)" >>"$S"
cat "$S"
