#!/usr/bin/env bash
# One device call: the TypeScript GPU checks through `fluxql serve --engine cuda` (device-run.sh server: test/gpu under
# node:test and the curl GraphQL generation), cut at SERVER_SECONDS (default 270), then, with the GPU idle, the batch-1
# rows of the CUDA modes benchmark (device-modes.sh a1: original, XL, S, S+cache at 1024x1024, 28 steps).
#   OUT=... [PATTERN=FCFC...] [ITERS=10] bash tools/device/server-then-modes.sh
# (carry .device-carry from pack-node.sh: Node, node_modules, ort-reference.json)
# Returns server.tar.gz (every log of the checks), modes.tar.gz (the benchmark's JSON/MD/clocks) and summary.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?}"
S=$OUT/summary.txt
mkdir -p /tmp/dev-server /tmp/dev-modes
echo "== server checks $(date +%T)" >"$S"
OUT=/tmp/dev-server timeout "${SERVER_SECONDS:-270}" bash engines/cuda/scripts/device-run.sh server >/tmp/dev-server/run.out 2>&1
echo "== server checks rc=$? (124: cut) $(date +%T)" >>"$S"
grep -E "^# (pass|fail|tests|skipped)|^not ok|✖|✔|events:|models:|Error" /tmp/dev-server/run.out | head -60 >>"$S"
tar -C /tmp/dev-server -czf "$OUT/server.tar.gz" .
# The same build folder as device-run.sh: one build for both.
FQ_BUILD=$PWD/engines/cuda/build OUT=/tmp/dev-modes bash engines/cuda/scripts/device-modes.sh a1 >/tmp/dev-modes/run.out 2>&1
echo "== modes a1 rc=$? $(date +%T)" >>"$S"
tail -25 /tmp/dev-modes/run.out >>"$S"
tar -C /tmp/dev-modes -czf "$OUT/modes.tar.gz" .
cat "$S"
