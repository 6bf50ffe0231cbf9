#!/usr/bin/env bash
# Several device scripts in one GPU call, one after another (they share the incremental build in /tmp/fq-build), each
# into its own folder that comes back as one tar as soon as it ends: the device tool returns at most 8 files, and a
# call cut at its limit still returns the parts that finished. Each part is NAME=SCRIPT [ARGS...] (a script under
# engines/cuda/scripts), quoted as one word:
#   OUT=$OUT bash engines/cuda/scripts/device-batch.sh "lora=device-lora-fused.sh" "xl=device-xlfuse.sh check"
# Writes $OUT/summary.txt (every part's summary, in order) and $OUT/NAME.tar.gz per part. DEADLINE (seconds from the
# start, default 570) cuts the part running at that time, so that its tar is still made inside the call's limit.
set -uo pipefail
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
END=$((SECONDS + ${DEADLINE:-570}))
rc=0
for part in "$@"; do
  name=${part%%=*}
  read -r -a cmd <<<"${part#*=}"
  dir=/tmp/fq-batch/$name
  rm -rf "$dir" && mkdir -p "$dir"
  echo "=== part $name: ${cmd[*]} ($(date +%T))" >>"$OUT/summary.txt"
  left=$((END - SECONDS))
  ((left > 20)) || { echo "=== part $name skipped: ${left} s left" >>"$OUT/summary.txt"; rc=1; continue; }
  OUT=$dir timeout -k 5 "$left" bash "$SCRIPTS/${cmd[0]}" "${cmd[@]:1}" >"$dir/stdout.txt" 2>&1
  prc=$?
  cat "$dir/summary.txt" >>"$OUT/summary.txt" 2>/dev/null || tail -20 "$dir/stdout.txt" >>"$OUT/summary.txt"
  echo "=== part $name rc=$prc ($(date +%T))" >>"$OUT/summary.txt"
  tar -C /tmp/fq-batch -czf "$OUT/$name.tar.gz" "$name"
  ((prc == 0)) || rc=1
done
exit $rc
