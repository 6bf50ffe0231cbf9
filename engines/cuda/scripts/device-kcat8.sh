#!/usr/bin/env bash
# One short GPU call (session 17's last): the fp8 LoRA along K (linear.cu kcat8) and the vectorised residual + norm
# kernel (FQ_RESNORM=vec), most important first, every result written straight under $OUT (a cut call keeps them):
#   1. selftest LoRA section in f32, bf16 and fp8 (each: the fixture LoRAs, and a rank-16 LoRA on every Linear along K
#      against the two-GEMM paths, "lora.along K vs two GEMMs");
#   2. `--bench-lora` fp8 (every block Linear fp8, reserve 256): the fp8 path's overhead at ranks 16 / 64;
#   3. selftest units (bf16) with FQ_RESNORM=vec (unit.residual_layernorm_*), then --bench bf16 b1 with
#      FQ_RESNORM=old and =vec (A/B, 3 iterations each: the residual_norm family ms/step and the request);
#   4. `--bench-lora` fp8 with FQ_LORA_RESERVE=0 (the fused path and the unpadded fp8 base step, same card).
#   OUT=$OUT bash engines/cuda/scripts/device-kcat8.sh            (carry [".device-carry/fixtures"])
set -uo pipefail
HERE=$PWD/engines/cuda LOG=$OUT/summary.txt FIX=${FIX:-.device-carry/fixtures}
source engines/cuda/scripts/device-common.sh
build_engine || exit 1
rc=0
say "selftest LoRA section, all precisions"
selftest_part selftest-lora.txt lora all 90 "along K"
say "bench-lora fp8, reserve 256"
timeout -k 5 100 "$ENGINE" --bench-lora --steps 6 --ranks 16,64 --precisions fp8 --out "$OUT/bench-kcat8" \
  >/dev/null 2>"$OUT/bench-kcat8.err" || rc=1
cat "$OUT/bench-kcat8.json" | cut -c1-400
say "selftest units bf16, FQ_RESNORM=vec"
FQ_RESNORM=vec selftest_part selftest-units-vec.txt units bf16 60 "residual_layernorm"
for v in old vec; do
  say "bench bf16 b1, FQ_RESNORM=$v"
  FQ_RESNORM=$v timeout -k 5 80 "$ENGINE" --bench --batches 1 --iters 3 --precisions bf16 --out "$OUT/bench-resnorm-$v" \
    >/dev/null 2>"$OUT/bench-resnorm-$v.err" || rc=1
  grep -E "own kernels|batch 1: mean" "$OUT/bench-resnorm-$v.err" | tail -2
  rm -f "$OUT/bench-resnorm-$v.md"
done
say "bench-lora fp8, reserve 0"
FQ_LORA_RESERVE=0 timeout -k 5 100 "$ENGINE" --bench-lora --steps 6 --ranks 16,64 --precisions fp8 \
  --out "$OUT/bench-fused8" >/dev/null 2>"$OUT/bench-fused8.err" || rc=1
cat "$OUT/bench-fused8.json" | cut -c1-400
say "done rc=$rc"
exit $rc
