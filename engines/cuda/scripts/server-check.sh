#!/usr/bin/env bash
# One GraphQL generation with curl against `fluxql serve --engine cuda` (the native engine): starts the server,
# asks `models`, submits `generateImage`, follows `jobProgress` over GraphQL-over-SSE with curl until the job ends,
# downloads the image, and stops the server. Writes under $OUT (default ./out): server.log, models.json,
# generate.json, progress.sse, image.png.
#   engines/cuda/scripts/server-check.sh            (from the repository root; node, curl and the built engine)
# Environment: PORT (default 8765), CUDA_PRECISION (default bf16), CUDA_ENGINE_BIN, MODEL_REPO as for the server.
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PORT=${PORT:-8765}
URL=http://127.0.0.1:$PORT/graphql
# A job below the batch size waits MAX_QUEUE_DELAY_MS for companions: time for curl to subscribe before it runs.
export PORT HOST=127.0.0.1 IMAGE_DIR=${IMAGE_DIR:-/tmp/fluxql-server-check-images} CUDA_PRECISION=${CUDA_PRECISION:-bf16} MAX_QUEUE_DELAY_MS=${MAX_QUEUE_DELAY_MS:-3000}
node bin/fluxql.js serve --engine cuda >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
gql() { curl -sS "$URL" -H 'content-type: application/json' -H 'accept: application/json' -d "$1"; }
for _ in $(seq 1 240); do
  grep -q 'serving .* at http' "$OUT/server.log" && break
  kill -0 $server 2>/dev/null || { echo "server exited:"; tail -20 "$OUT/server.log"; exit 1; }
  sleep 0.5
done
grep -q 'serving .* at http' "$OUT/server.log" || { echo "server did not start"; tail -20 "$OUT/server.log"; exit 1; }
gql '{"query":"{ models { id device specs { origin hardware width height steps latencySeconds source } } }"}' >"$OUT/models.json"
echo "models: $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["data"]["models"][0]; print(m["id"], "|", m["device"], "|", sum(s["origin"]=="MEASURED" for s in m["specs"]), "MEASURED rows")' "$OUT/models.json")"
gql '{"query":"mutation($i: GenerateImageInput!) { generateImage(input: $i) { __typename ... on MutationGenerateImageSuccess { data { jobId totalSteps } } ... on ValidationError { field message } } }","variables":{"i":{"prompt":"a lighthouse on a cliff at dawn","seed":42,"width":256,"height":128,"steps":8,"outputFormat":"PNG"}}}' >"$OUT/generate.json"
job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["generateImage"]["data"]["jobId"])' "$OUT/generate.json") || { cat "$OUT/generate.json"; exit 1; }
echo "job: $job"
# GraphQL over SSE: the stream ends (event: complete) when the job does.
curl -sS -N --max-time 300 "$URL" -H 'content-type: application/json' -H 'accept: text/event-stream' \
  -d "{\"query\":\"subscription(\$id: ID!) { jobProgress(id: \$id) { __typename ... on JobSnapshotEvent { status step totalSteps } ... on JobStepEvent { step totalSteps } ... on JobSucceededEvent { images { url width height format } } ... on JobFailedEvent { code message } } }\",\"variables\":{\"id\":\"$job\"}}" >"$OUT/progress.sse"
grep '^data:' "$OUT/progress.sse" | sed 's/^data: *//' | python3 -c '
import json, sys
events = [json.loads(l)["data"]["jobProgress"] for l in sys.stdin if l.strip()]
print("events:", " ".join(e["__typename"].replace("Job", "").replace("Event", "") + (str(e["step"]) if e.get("step") else "") for e in events))
last = events[-1]
assert last["__typename"] == "JobSucceededEvent", last
print(last["images"][0]["url"])
' >"$OUT/progress.txt" || { cat "$OUT/progress.sse"; exit 1; }
cat "$OUT/progress.txt" | head -1
img=$(tail -1 "$OUT/progress.txt")
curl -sS -o "$OUT/image.png" "$img"
python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(); assert b[:8]==b"\x89PNG\r\n\x1a\n", "not a PNG"; w,h=struct.unpack(">II", b[16:24]); print(f"image: PNG {w}x{h}, {len(b)} bytes"); assert (w,h)==(256,128)' "$OUT/image.png"
