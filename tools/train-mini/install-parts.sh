#!/usr/bin/env bash
# Assembles the files a GPU run of run-device.sh sent back into a model folder (default models/flux-mini):
#   bash tools/train-mini/install-parts.sh DIR_WITH_PARTS [MODEL_DIR]
# The parts hold transformer/ and vae/; the rest (model_index.json, scheduler/, text encoders, tokenizers) is
# flux-tiny's, copied. loss.csv, eval.json, train.log and the sample grids go to tools/train-mini/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=${1:?usage: install-parts.sh DIR_WITH_PARTS [MODEL_DIR]}
M=${2:-models/flux-mini}
mkdir -p "$M"
rm -rf "$M/transformer" "$M/vae"
cat "$P"/flux-mini.tar.part-* | tar -x -C "$M"
for x in model_index.json scheduler text_encoder text_encoder_2 tokenizer tokenizer_2; do
  rm -rf "${M:?}/$x" && cp -r "models/flux-tiny/$x" "$M/$x"
done
# The model card skeleton (placeholders {{...}} to fill from results/); an existing card is kept.
[ -f "$M/README.md" ] || cp tools/train-mini/MODEL_CARD.md "$M/README.md"
R=tools/train-mini/results
mkdir -p "$R"
for f in loss.csv eval.json samples.png samples_512.png train.log; do
  if [ -f "$P/$f" ]; then cp "$P/$f" "$R/$f"; fi
done
du -sh "$M"; ls "$R"
