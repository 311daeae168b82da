#!/usr/bin/env bash
# Where Tidewatch's resident memory goes under one load: a fresh Tidewatch (empty history directory) fed by
# `tidewatch loadgen`, its anonymous RSS (heap, stacks) sampled every 50 ms, then the split of resident
# memory into anonymous and file-backed pages (the binary's text) from /proc/PID/smaps_rollup.
#
#   bench/rss.sh BINARY PROTOCOL RATE BATCH SECONDS [PATH=VALUE ...]
#   bench/rss.sh target/release/tidewatch grpc 10000 512 20
#   bench/rss.sh target/release/tidewatch grpc 10000 512 20 analyzer.shards=1
#
# PATH=VALUE pairs are passed as `--set` overrides; environment variables (_RJEM_MALLOC_CONF) pass through.
# Prints accepted spans/s, idle and peak anonymous RSS (KiB), VmHWM, the CPU ticks used, and Rss/Anonymous.
set -euo pipefail
B=$1; PROTO=$2; RATE=$3; BATCH=$4; SECS=$5; shift 5
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
SETS=()
for s in "$@"; do SETS+=(--set "$s"); done
"$B" run --set collector.grpc.endpoint=127.0.0.1:0 --set collector.http.endpoint=127.0.0.1:0 \
  --set web.endpoint=127.0.0.1:0 --set "analyzer.store.data_dir=$D/data" --set log.level=warn \
  ${SETS[@]+"${SETS[@]}"} > "$D/out" 2> "$D/err" &
P=$!
for _ in $(seq 100); do grep -q listening "$D/out" 2>/dev/null && break; sleep 0.1; done
EP=$(grep -o "$PROTO=[0-9.:]*" "$D/out" | cut -d= -f2)
idle=$(awk '/RssAnon/ {print $2}' "/proc/$P/status")
( while kill -0 "$P" 2>/dev/null; do awk '/RssAnon/ {print $2}' "/proc/$P/status" 2>/dev/null || true; sleep 0.05; done ) > "$D/samples" &
S=$!
"$B" loadgen --protocol "$PROTO" --endpoint "http://$EP" --rate "$RATE" --batch "$BATCH" --duration "${SECS}s" \
  --concurrency 4 --metrics-and-logs false --json | tail -1 |
  python3 -c "import json,sys; r=json.load(sys.stdin); print('accepted spans/s', round(r['spans_accepted']/r['seconds']))"
sleep 1
echo "idle_anon_kib=$idle peak_anon_kib=$(sort -n "$D/samples" | tail -1) $(grep VmHWM "/proc/$P/status" | tr -s '\t ' ' ')" \
  "cpu_ticks=$(awk '{print $14+$15}' "/proc/$P/stat")" \
  "$(grep -E '^(Rss|Anonymous)' "/proc/$P/smaps_rollup" | tr -s ' ' | tr '\n' ' ')"
kill "$P"; wait "$P" 2>/dev/null || true
kill "$S" 2>/dev/null || true
