#!/usr/bin/env bash
# GPU parts for session 18 (issues 16 and 15), run through device-batch.sh so each part comes back as its own tar:
#   check: selftest LoRA section in f32, bf16 and fp8 (the B factors now placed outside the captured step,
#          linear.h place_reserve), selftest units in bf16 (the in-place QK-norm + RoPE kernel loads q and k first),
#          and the bf16 fixture sections with FQ_BRANCH_BF16=1 (branch outputs in bf16: conformance);
#   lora [STEPS]: --bench-lora bf16 and fp8, ranks 16 / 64, each LoRA step bracketed by base steps (overhead vs their
#          mean), STEPS steps per timing (default 6);
#   xl:    --bench-modes original and XL (XL's jobs write bf16 branch outputs, Request::branch_bf16), batch 1, each
#          with its floor; then --bench bf16 with FQ_BRANCH_BF16=1 for the own-kernel families per step;
#   modes: the modes table's LoRA rows at batch 1 (original and S, ranks 16 / 64 / 256);
#   fold:  the vectorised lora_fold_fp8: its unit test, the LoRA selftest in bf16 / fp8, fp8 and S LoRA overheads.
#   OUT=$OUT bash engines/cuda/scripts/device-batch.sh "check=device-lora-xl.sh check" "lora=device-lora-xl.sh lora" ...
# (carry [".device-carry/fixtures"] for check).
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
LOG=$OUT/summary.txt FIX=${FIX:-.device-carry/fixtures}
source "$(dirname "$0")/device-common.sh"
build_engine || exit 1
rc=0
case ${1:-} in
  check)
    say "selftest LoRA section, all precisions"
    selftest_part selftest-lora.txt lora all 120 "along K"
    say "selftest units bf16"
    selftest_part selftest-units.txt units bf16 60 "qk_norm|residual_layernorm"
    say "selftest bf16 transformer + pipeline + lora, FQ_BRANCH_BF16=1"
    FQ_BRANCH_BF16=1 selftest_part selftest-branch-bf16.txt transformer,pipeline,lora bf16 120
    ;;
  lora)
    say "bench-lora bf16 + fp8, ranks 16, 64 (bracketed), ${2:-6} steps"
    timeout -k 5 300 "$ENGINE" --bench-lora --steps "${2:-6}" --ranks 16,64 --precisions bf16,fp8 --out "$OUT/bench-lora" \
      >/dev/null 2>"$OUT/bench-lora.err" || rc=1
    grep -E "overhead|base step" "$OUT/bench-lora.err" | tail -12
    ;;
  xl)
    CARD=$(card_line)
    say "bench-modes original, XL (branch outputs bf16), batch 1, ${ITERS:-5} iterations"
    timeout -k 5 200 "$ENGINE" --bench-modes --size 1024 --steps 28 --iters "${ITERS:-5}" --card "$CARD" \
      --batches 1 --modes original,XL --out "$OUT/modes-b1xl" >/dev/null 2>"$OUT/modes-b1xl.err" || rc=1
    rm -f "$OUT/modes-b1xl.md"
    grep -E "bench-modes" "$OUT/modes-b1xl.err" | tail -4
    say "bench bf16 b1, FQ_BRANCH_BF16=1 (own-kernel families)"
    FQ_BRANCH_BF16=1 timeout -k 5 90 "$ENGINE" --bench --batches 1 --iters 2 --precisions bf16 \
      --out "$OUT/bench-branch-1" >/dev/null 2>"$OUT/bench-branch-1.err" || rc=1
    grep -E "own kernels|batch 1: mean|floor" "$OUT/bench-branch-1.err" | tail -4
    rm -f "$OUT/bench-branch-1.md"
    ;;
  modes)
    CARD=$(card_line)
    SPAT=${SPAT:-FFFCFCFCFCCFCCFCCFCCFCFCFCFC}
    say "bench-modes LoRA rows: original, S=fp8/$SPAT, ranks 16,64,256"
    timeout -k 5 400 "$ENGINE" --bench-modes --size 1024 --steps 28 --iters "${ITERS:-10}" --card "$CARD" \
      --batches 1 --modes "original,S=fp8/$SPAT" --lora-ranks 16,64,256 --out "$OUT/modes-b1lora" \
      >/dev/null 2>"$OUT/modes-b1lora.err" || rc=1
    rm -f "$OUT/modes-b1lora.md"
    grep -E "bench-lora|floor" "$OUT/modes-b1lora.err" | tail -12
    ;;
  fold)
    # The vectorised lora_fold_fp8 (four e4m3 a thread): its unit test, the LoRA section, fp8 and S overheads.
    say "selftest units bf16 (unit.lora_fold_fp8_*)"
    selftest_part selftest-units.txt units bf16 60 "lora_fold"
    say "selftest LoRA section, fp8"
    selftest_part selftest-lora-fp8.txt lora fp8 90 "along K|interleaved"
    say "bench-lora fp8, ranks 16, 64, 16 steps"
    timeout -k 5 150 "$ENGINE" --bench-lora --steps 16 --ranks 16,64 --precisions fp8 --out "$OUT/bench-lora-fp8" \
      >/dev/null 2>"$OUT/bench-lora-fp8.err" || rc=1
    cat "$OUT/bench-lora-fp8.json" | cut -c1-300
    CARD=$(card_line)
    SPAT=${SPAT:-FFFCFCFCFCCFCCFCCFCCFCFCFCFC}
    say "bench-modes S LoRA rows, ranks 16, 64"
    timeout -k 5 200 "$ENGINE" --bench-modes --size 1024 --steps 28 --iters 3 --card "$CARD" --batches 1 \
      --modes "S=fp8/$SPAT" --lora-ranks 16,64 --out "$OUT/modes-b1fold" >/dev/null 2>"$OUT/modes-b1fold.err" || rc=1
    rm -f "$OUT/modes-b1fold.md"
    grep -E "bench-lora|bench-modes" "$OUT/modes-b1fold.err" | tail -6
    ;;
  *) echo "part check, lora, xl, modes or fold"; exit 2 ;;
esac
say "done rc=$rc"
exit $rc
