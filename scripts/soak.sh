#!/usr/bin/env bash
# Bounded soak test on 127.0.0.1: `tpserve serve --tp 2` on stories260K under mixed-length load plus a second
# client whose requests are cut off by their deadline (random cancellations), for DURATION seconds (default
# 600). Samples the RSS of the coordinator and every worker every 10 s, then checks: zero errors in the main
# load, every KV block back in the pool, and RSS after warm-up not growing. Prints a summary; exit 1 on failure.
#   scripts/soak.sh [DURATION_S] [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
MODEL=${2:-../shared/models/stories260K}
BIN=build/bin
OUT=$(mktemp -d /tmp/tpserve-soak-XXXXXX)
"$BIN/tpserve" serve --model "$MODEL" --tp 2 --host 127.0.0.1 --port 0 --metrics-host 127.0.0.1 --metrics-port 0 --http-port 0 \
  --worker-port 0 --port-file "$OUT/ports.json" --kv-cache-memory 64MiB --max-num-seqs 16 > "$OUT/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -s "$OUT/ports.json" ] && break; sleep 0.1; done
PORT=$(python3 -c "import json;print(json.load(open('$OUT/ports.json'))['port'])")
MPORT=$(python3 -c "import json;print(json.load(open('$OUT/ports.json'))['metrics_port'])")
until curl -sf "http://127.0.0.1:$MPORT/ready" >/dev/null; do sleep 0.2; done

rss() {  # total RSS (KiB) of the server and its workers
  local total=0 p
  for p in $server $(pgrep -P $server); do
    total=$((total + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0)))
  done
  echo $total
}
( while kill -0 $server 2>/dev/null; do echo "$(date +%s) $(rss)" >> "$OUT/rss.txt"; sleep 10; done ) &
sampler=$!

"$BIN/tpserve-bench" --server 127.0.0.1:$PORT --duration "$DURATION" --concurrency 6 --input-len 64 \
  --output-len 96 --len-dist uniform --len-range 0.8 --seed 1 --json "$OUT/main.json" > "$OUT/main.txt" 2>&1 &
main=$!
"$BIN/tpserve-bench" --server 127.0.0.1:$PORT --duration "$DURATION" --concurrency 2 --input-len 32 \
  --output-len 400 --timeout 1 --seed 2 --json "$OUT/cancel.json" > "$OUT/cancel.txt" 2>&1 &
cancel=$!
wait $main || true
wait $cancel || true
kill $sampler 2>/dev/null || true
sleep 1
usage=$(curl -s "http://127.0.0.1:$MPORT/metrics" | awk '/^tpserve:kv_cache_usage_perc/{print $2}')
python3 - "$OUT" "$usage" <<'PY'
import json, sys
out, usage = sys.argv[1], float(sys.argv[2])
main = json.load(open(f"{out}/main.json"))
cancel = json.load(open(f"{out}/cancel.json"))
s = main.get("summary", main)
rows = [l.split() for l in open(f"{out}/rss.txt")]
t0 = int(rows[0][0])
after = [(int(t) - t0, int(k)) for t, k in rows if int(t) - t0 >= 60] or [(0, int(rows[-1][1]))]
first, last = after[0][1], after[-1][1]
growth = (last - first) / first if first else 0.0
failed = s.get("failed", s.get("failed_requests"))
print(f"soak: main completed={s.get('completed')} failed={failed}; cancel-load completed={cancel.get('summary', cancel).get('completed')}")
print(f"soak: RSS after warm-up {first} KiB -> {last} KiB ({growth*100:+.1f}%), KV usage at end {usage}")
ok = (failed in (0, {}, None) or failed == 0) and usage == 0 and growth < 0.05
print("soak: PASS" if ok else "soak: FAIL", f"(details in {out})")
sys.exit(0 if ok else 1)
PY
