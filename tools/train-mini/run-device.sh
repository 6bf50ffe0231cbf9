#!/usr/bin/env bash
# Trains flux-mini on the GPU machine, exports it, samples and judges it. Run from the repository root:
#   bash tools/train-mini/run-device.sh
# Env: OUT (required: files that come back), VAE_MINUTES (2.5), DIT_MINUTES (5.25), WALL_SECONDS (510: training stops
# and checkpoints after this many seconds of this invocation; a rerun on the same warm machine resumes from
# tools/train-mini/runs/flux-mini), SEED (14), EXTRA (extra train.py arguments), RUN_DIR, PYTHON,
# TINY=1 (CPU smoke test of this script at toy scale).
# Writes to $OUT (8 files at most, each < 16 MiB):
#   flux-mini.tar.part-00, -01, ...  transformer/ + vae/ of the exported model (tar, split at 15 MiB)
#   loss.csv        stage,step,seconds,loss,lr
#   train.log       the whole console output
#   eval.json       detector accuracy per attribute on 96 held-out-seed grammar prompts (256x256, 28 steps)
#   samples.png     the first 48 of them (8 per row); samples_512.png: 8 prompts at 512x512
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
: "${OUT:?OUT must name the output folder}"
mkdir -p "$OUT"
HERE=tools/train-mini
RUN=${RUN_DIR:-$HERE/runs/flux-mini}
STAGE=$RUN-export
LOG="$OUT/train.log"
T0=$(date +%s)
{
PY=${PYTHON:-python3}
if [ "${TINY:-0}" = 1 ]; then
  # CPU smoke test of this whole script: tiny nets, 64x64, a few seconds per stage.
  TRAIN_EXTRA="--tiny"; SAMPLE_ARGS="--n 8 --size 64 --steps 4 --extra-sizes 128"; XS=128
else
  TRAIN_EXTRA=""; SAMPLE_ARGS="--n 96 --size 256 --steps 28 --extra-sizes 512"; XS=512
fi
TINY=${TINY:-0} $PY - <<'PY'
import os, torch
if os.environ["TINY"] != "1":
    assert torch.cuda.is_available(), "CUDA is not available"
print(f"[device] torch {torch.__version__}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}", flush=True)
PY
rc=0
$PY $HERE/train.py --out "$RUN" --vae-minutes "${VAE_MINUTES:-2.5}" --dit-minutes "${DIT_MINUTES:-5.25}" \
  --wall-seconds "${WALL_SECONDS:-510}" --seed "${SEED:-14}" $TRAIN_EXTRA ${EXTRA:-} || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then echo "[run] train.py failed ($rc)"; exit "$rc"; fi
[ "$rc" -eq 2 ] && echo "[run] training stopped at the wall limit; exporting the checkpoint as it is (rerun resumes)"
cp "$RUN/loss.csv" "$OUT/loss.csv"
rm -rf "$STAGE" && mkdir -p "$STAGE"
$PY $HERE/export.py --run "$RUN" --out "$STAGE/flux-mini"
# text_encoder_2 travels only when trained (--train-t5): otherwise it is flux-tiny's, linked at install.
PARTS="transformer vae tokenizer_2"
cmp -s "$STAGE/flux-mini/text_encoder_2/model.safetensors" models/flux-tiny/text_encoder_2/model.safetensors ||
  PARTS="$PARTS text_encoder_2"
tar -C "$STAGE/flux-mini" -cf - $PARTS | split -b 15m -d -a 2 - "$OUT/flux-mini.tar.part-"
ls -la "$OUT"
$PY $HERE/sample.py --model "$STAGE/flux-mini" --out-dir "$STAGE/eval" $SAMPLE_ARGS
cp "$STAGE/eval/eval.json" "$STAGE/eval/samples.png" "$STAGE/eval/samples_$XS.png" "$OUT/"
$PY - "$RUN/loss.csv" "$STAGE/eval/eval.json" "$T0" <<'PY'
import csv, json, sys, time
rows = list(csv.DictReader(open(sys.argv[1])))
ev = json.load(open(sys.argv[2]))
def last(stage):
    r = [x for x in rows if x["stage"] == stage]
    return r[-1] if r else {"step": "-", "seconds": "-", "loss": "-"}
print("\n== flux-mini run summary ==")
print(f"{'stage':<12}{'steps':>8}{'seconds':>10}{'last loss':>12}")
for s in ("vae", "dit"):
    r = last(s)
    print(f"{s:<12}{r['step']:>8}{r['seconds']:>10}{r['loss'][:8]:>12}")
print("accuracy (%dx%d, %d steps, n=%d): %s" % (ev["size"], ev["size"], ev["steps"], ev["n"], ", ".join(f"{k} {v:.3f}" for k, v in ev["accuracy"].items())))
for k, v in ev.items():
    if k.startswith("accuracy_"):
        print(f"{k}: {v}")
print(f"wall {time.time() - float(sys.argv[3]):.0f}s")
PY
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
