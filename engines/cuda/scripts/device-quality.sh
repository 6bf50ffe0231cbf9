#!/usr/bin/env bash
# One GPU part: the CUDA modes on flux-mini (cuda-quality.py) after the build; the arguments after the inputs go to
# cuda-quality.py unchanged. Carry [".device-carry/flux-mini-quality.json"] (inputs made here by
# `flux-mini-reference.ts --prompts 48`). Results under $OUT/q; back here:
#   node --import tsx engines/cuda/scripts/cuda-quality-report.ts <q> bench/results/cuda-quality-flux-mini-h100
#   OUT=$OUT bash engines/cuda/scripts/device-quality.sh .device-carry/flux-mini-quality.json --thresholds 0.1,0.2
set -uo pipefail
HERE=$PWD/engines/cuda LOG=$OUT/summary.txt
source engines/cuda/scripts/device-common.sh
build_engine || exit 1
INPUTS=$1
shift
say "cuda-quality.py $*"
timeout -k 5 ${QUALITY_TIMEOUT:-300} python3 "$HERE/scripts/cuda-quality.py" "$ENGINE" "$INPUTS" models/flux-mini "$OUT/q" "$@"
rc=$?
say "done rc=$rc"
exit $rc
