#!/bin/sh
# Lays out what the runtime images carry, from a built checkout (run from the repository root after `npm run build`,
# `npm run build:web` and `npm prune --omit=dev`): the compiled JavaScript (dist/, no TypeScript sources, so
# bin/fluxql.js runs the build), the entry point, the embedded model, the web page, the benchmark results the
# `models` query shows, and the production node_modules.
#   docker/assemble-app.sh DEST                      # copies node_modules (the Dockerfile)
#   docker/assemble-app.sh DEST --link-node-modules  # symlinks it (the test that runs this without Docker)
set -eu
dest=$1
mode=${2:-copy}
for need in dist/src/cli/main.js dist/src/pipeline/engine-process/host.js web/dist/index.html models/flux-tiny/model_index.json; do
  [ -e "$need" ] || { echo "assemble-app: $need is missing (build first)" >&2; exit 1; }
done
mkdir -p "$dest/web" "$dest/bench" "$dest/docker"
cp package.json "$dest/"
# -L: real files even where the source tree holds symlinks, so /app is self-contained.
cp -RL bin dist models "$dest/"
cp -RL web/dist "$dest/web/dist"
cp -RL bench/results "$dest/bench/results"
cp -L docker/healthcheck.mjs "$dest/docker/"
if [ "$mode" = --link-node-modules ]; then
  ln -s "$(pwd)/node_modules" "$dest/node_modules"
else
  cp -R node_modules "$dest/node_modules"
fi
