#!/usr/bin/env bash
# User-space instructions per accepted span: a fresh Tidewatch (empty history directory) under valgrind's
# callgrind, counting from the moment it listens until `tidewatch loadgen` (run natively) has sent a fixed
# load. The count does not depend on machine load or on the other process, so two builds can be compared
# to a fraction of a per cent where CPU time moves by a fifth between runs; it leaves out the kernel's work
# and cache misses, which only CPU time shows (bench/ingest.py). Needs valgrind (Debian: apt-get install valgrind).
#
#   bench/instructions.sh BINARY PROTOCOL RATE BATCH SECONDS [OUTPUT_PREFIX]
#   bench/instructions.sh target/release/tidewatch grpc 5000 512 8
#
# Under callgrind the server runs some 50 times slower, so the rate is lower than bench/ingest.py's 10k
# spans/s; the work per request and per span is the same. Prints the instructions, the accepted spans and
# their ratio; the profile stays in OUTPUT_PREFIX.cg.1 for `callgrind_annotate` (default: a temporary file).
set -euo pipefail
B=$1; PROTO=$2; RATE=$3; BATCH=$4; SECS=$5
D=$(mktemp -d)
OUT=${6:-$D/profile}
trap 'kill "$P" 2>/dev/null || true; rm -rf "$D"' EXIT
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT.cg" \
  "$B" run --set collector.grpc.endpoint=127.0.0.1:0 --set collector.http.endpoint=127.0.0.1:0 \
  --set web.endpoint=127.0.0.1:0 --set "analyzer.store.data_dir=$D/data" --set log.level=warn \
  > "$D/out" 2> "$D/err" &
P=$!
for _ in $(seq 600); do grep -q listening "$D/out" 2>/dev/null && break; sleep 0.1; done
EP=$(grep -o "$PROTO=[0-9.:]*" "$D/out" | cut -d= -f2)
callgrind_control --instr=on "$P" > /dev/null 2>&1
"$B" loadgen --protocol "$PROTO" --endpoint "http://$EP" --rate "$RATE" --batch "$BATCH" --duration "${SECS}s" \
  --concurrency 4 --metrics-and-logs false --json | tail -1 > "$D/load"
callgrind_control --dump "$P" > /dev/null 2>&1
kill "$P"
wait "$P" 2>/dev/null || true
IR=$(callgrind_annotate "$OUT.cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
python3 - "$IR" "$D/load" <<'PY'
import json, sys
ir, load = int(sys.argv[1]), json.load(open(sys.argv[2]))
spans = load["spans_accepted"]
print(f"instructions {ir:,}  accepted spans {spans:,}  instructions per span {ir / spans:,.0f}")
PY
