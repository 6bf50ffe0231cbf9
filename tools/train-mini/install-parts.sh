#!/usr/bin/env bash
# Assembles the files a GPU run of run-device.sh sent back into a model folder (default models/flux-mini):
#   bash tools/train-mini/install-parts.sh DIR_WITH_PARTS [MODEL_DIR]
# The parts hold transformer/, vae/, tokenizer_2/ (and text_encoder_2/ when trained); the rest (model_index.json, scheduler/, text encoders, tokenizer/) is
# flux-tiny's, copied. loss.csv, eval.json, train.log and the sample grids go to tools/train-mini/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=${1:?usage: install-parts.sh DIR_WITH_PARTS [MODEL_DIR]}
M=${2:-models/flux-mini}
mkdir -p "$M"
rm -rf "$M/transformer" "$M/vae" "$M/tokenizer_2" "$M/text_encoder_2"
cat "$P"/flux-mini.tar.part-* | tar -x -C "$M"
# tokenizer_2 comes from the parts: its model_max_length is flux-mini's T5 length (export.py set_t5_length).
for x in model_index.json scheduler; do
  rm -rf "${M:?}/$x" && cp -r "models/flux-tiny/$x" "$M/$x"
done
# The frozen text encoders and the CLIP tokenizer are flux-tiny's, byte for byte: relative links instead of 13 MB of
# copies keep the repository (and every tree sent to a GPU machine) smaller. `cp -rL` makes a standalone copy.
# text_encoder_2 is linked only when the parts did not bring a trained one (train.py --train-t5).
for x in text_encoder text_encoder_2 tokenizer; do
  [[ $x == text_encoder_2 && -d $M/$x ]] && continue
  rm -rf "${M:?}/$x" && ln -s "../flux-tiny/$x" "$M/$x"
done
# The model card skeleton (placeholders {{...}} to fill from results/); an existing card is kept.
[ -f "$M/README.md" ] || cp tools/train-mini/MODEL_CARD.md "$M/README.md"
R=tools/train-mini/results
mkdir -p "$R"
for f in loss.csv eval.json samples.png samples_512.png train.log; do
  if [ -f "$P/$f" ]; then cp "$P/$f" "$R/$f"; fi
done
du -sh "$M"; ls "$R"
