#!/usr/bin/env bash
# End-to-end serving figures for docs/PERFORMANCE.md: starts `tpserve serve` on 127.0.0.1 (ephemeral ports),
# records the load time from its log and each worker's VmRSS, then for each concurrency N runs N concurrent
# `tpserve generate --json` clients (greedy, --ignore-eos) and prints aggregate tokens/s plus the server's
# mean engine step time over that run (from /metrics), so throughput can be set against per-step cost.
#
#   scripts/bench-serve.sh MODEL_DIR [TP=1] [CONCURRENCIES=1,4,16] [MAX_NEW_TOKENS=32] [REPEATS=1]
# Env: TPSERVE=path/to/tpserve (default build-perf/bin/tpserve), KV_MEMORY (default 2GiB), EXTRA_SERVE_ARGS.
set -euo pipefail

MODEL=${1:?usage: bench-serve.sh MODEL_DIR [TP] [CONCURRENCIES] [MAX_NEW_TOKENS] [REPEATS]}
TP=${2:-1}
CONC=${3:-1,4,16}
NEW=${4:-32}
REPEATS=${5:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TPSERVE=${TPSERVE:-$ROOT/build-perf/bin/tpserve}
KV_MEMORY=${KV_MEMORY:-2GiB}
WORK=$(mktemp -d /tmp/bench-serve.XXXXXX)

"$TPSERVE" serve --model "$MODEL" --tp "$TP" --host 127.0.0.1 --worker-host 127.0.0.1 --metrics-host 127.0.0.1 \
  --port 0 --worker-port 0 --metrics-port 0 --http-port 0 --port-file "$WORK/ports.json" --kv-cache-memory "$KV_MEMORY" \
  --max-num-seqs 16 --restart-workers=false ${EXTRA_SERVE_ARGS:-} >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
cleanup() { kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; }
trap cleanup EXIT

# Wait (bounded) for the group to be ready, not on a sleep.
for _ in $(seq 600); do
  grep -q "tensor-parallel group of $TP ready" "$WORK/serve.log" 2>/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
grep -q "tensor-parallel group of $TP ready" "$WORK/serve.log" || { echo "server not ready in 300 s" >&2; exit 1; }
echo "== load (serve log)"
grep -E "loaded .* weight bytes|group of .* ready|registered" "$WORK/serve.log" | sed 's/^/  /'
echo "== worker RSS after load (VmRSS of the children of tpserve serve, pid $SERVE_PID)"
for p in $(pgrep -P "$SERVE_PID"); do echo "  pid $p: $(grep VmRSS /proc/$p/status | awk '{print $2, $3}')"; done

python3 - "$WORK/ports.json" "$TPSERVE" "$CONC" "$NEW" "$REPEATS" "$SERVE_PID" <<'EOF'
import json, subprocess, sys, time, urllib.request, statistics, concurrent.futures as cf
ports, tpserve, conc, new, repeats, serve_pid = sys.argv[1:]
p = json.load(open(ports))
server = f"127.0.0.1:{p['port']}"
metrics_url = f"http://127.0.0.1:{p['metrics_port']}/metrics"

def step_stats():
  s = c = 0.0
  for line in urllib.request.urlopen(metrics_url, timeout=10).read().decode().splitlines():
    if line.startswith('tpserve:worker_step_time_seconds_sum{') and 'rank="0"' in line: s = float(line.split()[-1])
    if line.startswith('tpserve:worker_step_time_seconds_count{') and 'rank="0"' in line: c = float(line.split()[-1])
  return s, c

def one(i):
  t0 = time.monotonic()
  out = subprocess.run([tpserve, "generate", "--server", server, "--prompt", f"Story number {i}: once upon a time",
                        "--max-new-tokens", new, "--ignore-eos", "--temperature", "0", "--json"],
                       capture_output=True, text=True, timeout=900)
  if out.returncode != 0: raise RuntimeError(out.stderr)
  return json.loads(out.stdout)["usage"]["completion_tokens"], time.monotonic() - t0

def rss():
  kids = subprocess.run(["pgrep", "-P", serve_pid], capture_output=True, text=True).stdout.split()
  r = []
  for k in kids:
    for line in open(f"/proc/{k}/status"):
      if line.startswith("VmRSS"): r.append(int(line.split()[1]) // 1024)
  return r

one(0)  # warm-up: first request pays scratch growth
print("== concurrency (greedy, --ignore-eos, max_new_tokens=%s)" % new)
print("| clients | run | tokens | wall s | agg tok/s | per-client tok/s (median) | steps | mean step ms | worker RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for n in [int(x) for x in conc.split(",")]:
  for r in range(int(repeats)):
    s0, c0 = step_stats()
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(n) as ex: res = list(ex.map(one, range(1, n + 1)))
    wall = time.monotonic() - t0
    s1, c1 = step_stats()
    toks = sum(t for t, _ in res)
    per = statistics.median(t / w for t, w in res)
    steps = c1 - c0
    step_ms = 1e3 * (s1 - s0) / steps if steps else 0
    print(f"| {n} | {r+1} | {toks} | {wall:.1f} | {toks / wall:.2f} | {per:.2f} | {steps:.0f} | {step_ms:.1f} | {rss()} |",
          flush=True)
EOF
