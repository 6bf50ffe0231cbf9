#!/usr/bin/env bash
# One GPU call (~3 minutes with the build) for the fused LoRA path (FQ_LORA_FUSED=1, lora.h / linear.h), A/B against
# the add-after path it would replace as the default:
#   1. the selftest's LoRA section (fixture LoRAs against diffusers, a set of all, unload bit for bit, a LoRA
#      generation replayed from a CUDA graph) in f32 and bf16, fused;
#   2. the LoRA protocol test (per-job sets with strengths, interleaved jobs, unload under a live job) in bf16, fused;
#   3. `--bench-lora` (synthetic FLUX.1-dev size, 1024x1024, every Linear, ranks 16/64, bf16 and fp8), unfused then
#      fused, on the same warm card: overhead % and set build (switch) ms, the issue 16 goals being <= 5 % and < 10 ms.
#   OUT=$OUT bash engines/cuda/scripts/device-lora-fused.sh        (carry .device-carry/fixtures, or FIX=<fixtures>)
#   4. the same checks and bench with the LoRA along K (FQ_LORA_RESERVE=64, linear.h), and the base (no LoRA) selftest
#      sections with the reserve on: the padded strides must not change the base output.
# Files under $OUT (run it under device-batch.sh, which tars them): summary.txt, build.log, selftest-{lora,kcat}.txt,
# protocol-{lora,kcat}.txt, bench-{unfused,fused,kcat}.json and their .err. If 1 and 2 pass and the fused rows meet the goals, make fused the default (lora.cu's constructor).
set -uo pipefail
HERE=$PWD/engines/cuda LOG=$OUT/summary.txt FIX=${FIX:-.device-carry/fixtures}
source engines/cuda/scripts/device-common.sh
build_engine || exit 1
rc=0
say "selftest LoRA section, fused (f32, bf16)"
FQ_LORA_FUSED=1 FQ_SELFTEST_ONLY=lora timeout -k 5 90 "$ENGINE" --selftest "$FIX" models/flux-tiny both \
  >"$OUT/selftest-lora.txt" 2>&1 || rc=1
grep -E "FAIL|required cases" "$OUT/selftest-lora.txt" | head -20
say "LoRA protocol test, fused (bf16)"
FQ_LORA_FUSED=1 timeout -k 5 90 python3 "$HERE/tests/protocol_lora_test.py" "$ENGINE" "$FIX" models/flux-tiny bf16 \
  >"$OUT/protocol-lora.txt" 2>&1 || rc=1
tail -3 "$OUT/protocol-lora.txt"
say "LoRA along K (FQ_LORA_RESERVE=64): selftest LoRA section (f32, bf16), then units, transformer, pipeline (bf16)"
FQ_LORA_FUSED=1 FQ_LORA_RESERVE=64 FQ_SELFTEST_ONLY=lora timeout -k 5 90 "$ENGINE" --selftest "$FIX" models/flux-tiny both \
  >"$OUT/selftest-kcat.txt" 2>&1 || rc=1
FQ_LORA_RESERVE=64 FQ_SELFTEST_ONLY=units,transformer,pipeline timeout -k 5 120 "$ENGINE" --selftest "$FIX" \
  models/flux-tiny bf16 >>"$OUT/selftest-kcat.txt" 2>&1 || rc=1
grep -E "FAIL|required cases" "$OUT/selftest-kcat.txt" | head -20
FQ_LORA_FUSED=1 FQ_LORA_RESERVE=64 timeout -k 5 90 python3 "$HERE/tests/protocol_lora_test.py" "$ENGINE" "$FIX" \
  models/flux-tiny bf16 >"$OUT/protocol-kcat.txt" 2>&1 || rc=1
tail -3 "$OUT/protocol-kcat.txt"
# kcat: bf16 only (fp8 layers have no reserve: they take the fused path, the "fused" run's fp8 rows).
for v in unfused fused kcat; do
  say "bench-lora $v"
  precs=bf16,fp8
  [[ $v == kcat ]] && precs=bf16
  FQ_LORA_FUSED=$([[ $v == unfused ]] && echo 0 || echo 1) FQ_LORA_RESERVE=$([[ $v == kcat ]] && echo 64 || echo 0) \
    timeout -k 5 150 "$ENGINE" --bench-lora --steps 6 \
    --ranks 16,64 --precisions $precs --out "$OUT/bench-$v" >/dev/null 2>"$OUT/bench-$v.err" || rc=1
  python3 - "$OUT/bench-$v.json" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"  {r['precision']:5} rank {r['rank']:3}: overhead {r['overhead_pct']:6.2f} %  step {r['lora_step_ms']:.2f} "
          f"vs {r['base_step_ms']:.2f} ms  switch (set build) {r['set_build_ms']:.2f} ms  load {r['load_ms']:.0f} ms")
EOF
done
say "done rc=$rc"
exit $rc
