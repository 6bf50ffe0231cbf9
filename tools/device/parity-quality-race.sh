#!/usr/bin/env bash
# One short device call, results written straight under $OUT so that a call cut at its limit still returns them
# (session 15 lost a whole call to a wrapper that tarred only at its end, while four racecheck processes starved
# the checks beside them: racecheck shares the GPU badly, so here it runs last, alone):
#   1. build;
#   2. flux-mini parity with ONNX Runtime's images (issue 14): $OUT/parity.txt;
#   3. the CUDA modes on flux-mini (issue 15): $OUT/cuda-quality.tar.gz, PSNR per mode in $OUT/summary.txt;
#   4. racecheck of the bf16 selftest with the engine's own attention (cuDNN's generated kernels excluded), its
#      sections (FQ_SELFTEST_ONLY) as parallel processes, each cut at DEADLINE seconds after the start (issue 19):
#      one line per section in summary.txt, the logs as $OUT/race-<section>.txt.
#   OUT=$OUT FIX=.device-carry/fixtures [DEADLINE=430] [RACE_PARTS="..."] bash tools/device/parity-quality-race.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?}" "${FIX:?}"
T0=$(date +%s)
HERE=$PWD/engines/cuda LOG=$OUT/summary.txt
source engines/cuda/scripts/device-common.sh
build_engine || exit 1
say "flux-mini parity with ORT (f32 2/255, bf16 12/255, detector)"
timeout 150 python3 engines/cuda/tests/flux_mini_parity_test.py "$ENGINE" .device-carry/flux-mini-ref.json \
  models/flux-mini >"$OUT/parity.txt" 2>&1
echo "parity rc=$?"; tail -12 "$OUT/parity.txt"
say "CUDA modes on flux-mini"
Q=/tmp/fq-quality
rm -rf "$Q"
PYTHONUNBUFFERED=1 timeout 150 python3 engines/cuda/scripts/cuda-quality.py "$ENGINE" \
  .device-carry/flux-mini-quality.json models/flux-mini "$Q" --thresholds "${THRESHOLDS:-0.05,0.1,0.15,0.2,0.3}" 2>&1 |
  grep -E "cuda-quality|Error|error" | tail -12
tar -C "$Q" -czf "$OUT/cuda-quality.tar.gz" .
# A first look at PSNR against original (cuda-quality-report.ts computes the real rows back home).
python3 - "$Q" <<'PY'
import gzip, json, os, sys
import numpy as np
d = sys.argv[1]
run = json.load(open(os.path.join(d, "quality-run.json")))
n = len(run["prompts"])
ref = np.split(np.frombuffer(gzip.open(os.path.join(d, "original.rgb.gz")).read(), np.uint8).astype(np.float64), n)
for m in run["modes"]:
    x = np.split(np.frombuffer(gzip.open(os.path.join(d, m["file"])).read(), np.uint8).astype(np.float64), n)
    ps = [10 * np.log10(255 ** 2 / max(np.mean((a - b) ** 2), 1e-12)) for a, b in zip(x, ref)]
    print(f"psnr {m['mode']}: mean {np.mean(ps):.2f} dB (min {np.min(ps):.2f}), full steps mean "
          f"{m['full_steps_mean']:.1f}, pattern {m['most_common_pattern']}")
PY
LEFT=$(( ${DEADLINE:-430} - ($(date +%s) - T0) ))
# racecheck-sections.sh, its lines into this summary once (LOG=/dev/null: its own tee would write them twice).
LOG=/dev/null OUT=$OUT RS=$LEFT FIX=$FIX PARTS=${RACE_PARTS:-units,encoders,transformer lora pipeline edit} \
  bash tools/device/racecheck-sections.sh
say "done"
