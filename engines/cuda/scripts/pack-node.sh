#!/usr/bin/env bash
# Packs Node.js and a production node_modules into .device-carry/ for `device-run.sh server` on the GPU machine
# (which has no Node), small enough to travel with the working tree (the device tool takes 64 MiB in all):
# a stripped Node binary; `npm ci --omit=dev` in a temporary folder (the repository's own node_modules is not
# touched) plus tsx (a dev dependency; the checks run the sources), without the Redis packages (bullmq, ioredis: scale-out roles only, imported lazily) and without vitest
# (the GPU checks run under node:test there); without onnxruntime-node's native binaries (45 MB: `serve --engine
# cuda` never loads ONNX Runtime, src/runtime/ort.ts; the checks read ORT's reference images from
# ort-reference.json, made here by test/gpu/write-ort-reference.ts); no type declarations, source maps or docs; no
# CommonJS copy of GraphiQL (9 MB: the project is an ES module), zod's TypeScript sources or bintrees' tests.
# Needs the registry (run it here, not on the GPU machine).
#   engines/cuda/scripts/pack-node.sh        then carry [".device-carry"] and `source .device-carry/activate.sh`
set -euo pipefail
root=$(git rev-parse --show-toplevel)
out=$root/.device-carry
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$root/package.json" "$root/package-lock.json" "$tmp/"
python3 - "$tmp/package.json" "$tmp/package-lock.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
for k in ("bullmq", "ioredis"):
    p["dependencies"].pop(k, None)
# The GPU checks run the TypeScript sources (`node --import tsx`); tsx is a dev dependency since the build step.
p["dependencies"]["tsx"] = p["devDependencies"].pop("tsx")
json.dump(p, open(sys.argv[1], "w"), indent=2)
# `npm install --omit=dev` follows the lock's "dev" flags, not package.json: clear them on tsx and everything it
# pulls in, or it is left out (session 13's device call found no tsx there).
lock = json.load(open(sys.argv[2]))
pk = lock["packages"]
pk[""]["dependencies"]["tsx"] = pk[""]["devDependencies"].pop("tsx")
todo, seen = ["node_modules/tsx"], set()
while todo:
    key = todo.pop()
    if key in seen or key not in pk:
        continue
    seen.add(key)
    for f in ("dev", "devOptional"):
        pk[key].pop(f, None)
    deps = {**pk[key].get("dependencies", {}), **pk[key].get("optionalDependencies", {})}
    for name in deps:
        nested = f"{key}/node_modules/{name}"
        todo.append(nested if nested in pk else f"node_modules/{name}")
json.dump(lock, open(sys.argv[2], "w"), indent=2)
PY
(cd "$tmp" && npm install --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
mkdir -p "$out"
strip -o "$tmp/node" "$(readlink -f "$(command -v node)")"
xz -T2 -9e -c "$tmp/node" >"$out/node.xz"
tar -C "$tmp" -cf - \
  --exclude='node_modules/onnxruntime-node/bin' --exclude='node_modules/onnx-proto/node_modules/protobufjs/cli' \
  --exclude='node_modules/@types' --exclude='node_modules/.package-lock.json' \
  --exclude='node_modules/@graphql-yoga/render-graphiql/cjs' --exclude='node_modules/zod/src' \
  --exclude='node_modules/bintrees/test' \
  --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' --exclude='*.map' --exclude='*.md' \
  node_modules | xz -T2 -9e >"$out/node_modules.tar.xz"
[[ -f $tmp/node_modules/tsx/package.json ]] || { echo "pack-node: tsx missing from the pack" >&2; exit 1; }
(cd "$root" && node --import tsx test/gpu/write-ort-reference.ts "$out/ort-reference.json")
cat >"$out/activate.sh" <<'ACT'
# Unpacks Node.js and node_modules on the GPU machine; run from the repository root with `source`.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
xz -dc "$here/node.xz" > /tmp/node && chmod +x /tmp/node
mkdir -p /tmp/nodebin && ln -sf /tmp/node /tmp/nodebin/node && export PATH=/tmp/nodebin:$PATH
[ -d node_modules ] || tar -xJf "$here/node_modules.tar.xz"
node --version
ACT
du -sh "$out"/* | sed 's#^#  #'
tree=$(git -C "$root" ls-files -z | (cd "$root" && xargs -0 stat -c %s) | awk '{s+=$1} END {print int(s/1048576)}')
carry=$(du -sm "$out" | cut -f1)
echo "working tree ${tree} MiB + .device-carry ${carry} MiB = $((tree + carry)) MiB (limit 64)"
