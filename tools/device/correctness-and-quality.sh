#!/usr/bin/env bash
# One device call for everything that needs the GPU's correctness, not its clock (GPU time is scarce; see
# engines/cuda/NOTES.md "Next GPU calls"):
#   1. one build, then, concurrently:
#      a. compute-sanitizer on the bf16 selftest (device-foundations.sh sanitize): memcheck, racecheck with cuDNN's
#         SDPA, and racecheck with the engine's own attention split into the selftest's sections (FQ_RACE_PARTS),
#         one process each, so that the whole selftest is covered inside one call (issue 19);
#      b. device-foundations.sh check: selftests, protocol tests, plans, calibration, and the flux-mini parity with
#         ONNX Runtime when .device-carry/flux-mini-ref.json is carried (issue 14);
#         then cuda-quality.py: the CUDA modes on flux-mini (bench:quality's prompts from
#         .device-carry/flux-mini-quality.json), original / S / S+cache at several thresholds (issue 15).
#   2. the logs tarred into $OUT: check.tar.gz, cuda-quality.tar.gz, sanitize.tar.gz, and summary.txt.
#   OUT=$OUT FIX=.device-carry/fixtures bash tools/device/correctness-and-quality.sh
# Environment: FQ_SAN_S, FQ_RACE_OWN_S, FQ_RACE_PARTS (device-foundations.sh), THRESHOLDS (cuda-quality.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?}" "${FIX:?}"
ROOT=$PWD
W=/tmp/dev-correct
rm -rf "$W" && mkdir -p "$W/s" "$W/f" "$W/q"
S=$OUT/summary.txt
echo "== start $(date +%T)" >"$S"
HERE=$ROOT/engines/cuda LOG=$W/build-summary.txt
# One build first, so the two runs below find it done (their own builds are no-ops then, not two ninjas at once).
(OUT=$W source engines/cuda/scripts/device-common.sh && build_engine) >>"$S" 2>&1 || { cat "$S"; exit 1; }
echo "== built $(date +%T)" >>"$S"
export FQ_SAN_S=${FQ_SAN_S:-30} FQ_RACE_OWN_S=${FQ_RACE_OWN_S:-300}
export FQ_RACE_PARTS=${FQ_RACE_PARTS-units,encoders,transformer lora pipeline edit}
OUT=$W/s bash engines/cuda/scripts/device-foundations.sh sanitize "$FIX" >"$W/s/run.out" 2>&1 &
SAN=$!
OUT=$W/f bash engines/cuda/scripts/device-foundations.sh check "$FIX" >"$W/f/run.out" 2>&1
echo "== check rc=$? $(date +%T)" >>"$S"
grep -E "^== |FAIL|exit|passed|failed|error|parity|max" "$W/f/run.out" | grep -v '^{' | head -80 >>"$S"
tar -C "$W" -czf "$OUT/check.tar.gz" f build-summary.txt   # back even if the sanitizer overruns the call
(
  source engines/cuda/scripts/device-common.sh >/dev/null 2>&1
  PYTHONUNBUFFERED=1 python3 engines/cuda/scripts/cuda-quality.py /tmp/fq-build/fluxql-engine \
    .device-carry/flux-mini-quality.json models/flux-mini "$W/q" --thresholds "${THRESHOLDS:-0.05,0.1,0.15,0.2,0.3}"
) >"$W/q/run.out" 2>&1
echo "== cuda-quality rc=$? $(date +%T)" >>"$S"
grep -E "cuda-quality|Error|error" "$W/q/run.out" | tail -12 >>"$S"
# PSNR of every mode against original here, for a first look (the report back home computes the real rows).
python3 - "$W/q" >>"$S" 2>&1 <<'PY'
import gzip, json, os, sys
import numpy as np
d = sys.argv[1]
run = json.load(open(os.path.join(d, "quality-run.json")))
ref = np.frombuffer(gzip.open(os.path.join(d, "original.rgb.gz")).read(), np.uint8).astype(np.float64)
for m in run["modes"]:
    x = np.frombuffer(gzip.open(os.path.join(d, m["file"])).read(), np.uint8).astype(np.float64)
    n = len(run["prompts"])
    per = [(a - b) for a, b in zip(np.split(x, n), np.split(ref, n))]
    ps = [10 * np.log10(255 ** 2 / max(np.mean(e ** 2), 1e-12)) for e in per]
    print(f"psnr {m['mode']}: mean {np.mean(ps):.2f} dB, full steps mean {m['full_steps_mean']:.1f}, "
          f"pattern {m['most_common_pattern']}")
PY
tar -C "$W/q" -czf "$OUT/cuda-quality.tar.gz" .
wait "$SAN"
echo "== sanitize rc=$? $(date +%T)" >>"$S"
grep -E "^== |exit|race reports|SUMMARY|required cases" "$W/s/run.out" | head -40 >>"$S"
tar -C "$W" -czf "$OUT/sanitize.tar.gz" s
echo "== done $(date +%T)" >>"$S"
cat "$S"
