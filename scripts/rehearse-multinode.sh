#!/usr/bin/env bash
# Rehearses the multi-node Kubernetes layout as processes on 127.0.0.1: the LeaderWorkerSet overlay's flag
# files and environment, through the image's entrypoint (deploy/docker/tpserve-launch.sh), as three processes
# (coordinator, rank 0, rank 1; TP=2), with the worker-auth-token component's flag parts, then checks that both
# ranks authenticated and the greedy ids against ../shared/reference/stories260K.json.
#   scripts/rehearse-multinode.sh [--model DIR] [--bin TPSERVE] [--overlay DIR]
# Only what cannot hold on one CPU host is rewritten in the flag files (printed as a diff): model path, bind
# addresses (127.0.0.1), ports (free ones), --device=cpu, --comm_backend=gloo, a small KV cache.
# Exit 0: ids match; 1: mismatch or failure; 77: skipped (no ../shared data or no binary).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
model="$repo/../shared/models/stories260K"
reference="$repo/../shared/reference/stories260K.json"
bin=${TPSERVE_BIN:-$repo/build/bin/tpserve}
overlay="$repo/deploy/k8s/overlays/multi-node-lws"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --overlay) overlay=$2; shift 2 ;;
    --reference) reference=$2; shift 2 ;;
    *) echo "rehearse-multinode: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [ ! -f "$model/config.json" ] || [ ! -f "$reference" ]; then
  echo "rehearse-multinode: SKIP: shared data absent ($model, $reference)"; exit 77
fi
if [ ! -x "$bin" ]; then
  echo "rehearse-multinode: SKIP: no tpserve binary at $bin (build it or pass --bin)"; exit 77
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
launch="$repo/deploy/docker/tpserve-launch.sh"
health="$repo/deploy/docker/healthcheck.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/tpserve-rehearse.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

read -r port worker_port metrics_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')

# set_flag FILE NAME VALUE: replace --NAME=... in FILE, or append it.
set_flag() {
  if grep -q "^--$2=" "$1"; then sed -i "s|^--$2=.*|--$2=$3|" "$1"; else echo "--$2=$3" >> "$1"; fi
}
mkdir -p "$work/flags"
cp "$overlay/coordinator.flags" "$overlay/worker.flags" "$work/flags/"
c="$work/flags/coordinator.flags"
w="$work/flags/worker.flags"
set_flag "$c" model "$model"
for h in host worker_host metrics_host; do set_flag "$c" "$h" 127.0.0.1; done
set_flag "$c" port "$port"
set_flag "$c" worker_port "$worker_port"
set_flag "$c" metrics_port "$metrics_port"
set_flag "$c" http_port 0
set_flag "$c" comm_backend gloo
set_flag "$c" kv_cache_memory 64MiB
set_flag "$w" device cpu
# Worker-plane authentication as the token component ships it (deploy/k8s/components/worker-auth-token): its
# <role>.worker-auth.flags parts, read by tpserve-launch after <role>.flags, with the Secret's mount path
# pointing at a token made here.
token_component="$repo/deploy/k8s/components/worker-auth-token"
mkdir -p "$work/flags/cluster-token"
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$work/flags/cluster-token/token"
for part in "$token_component"/*.flags; do
  sed "s|/etc/tpserve/|$work/flags/|" "$part" > "$work/flags/$(basename "$part")"
done
echo "== flag files: overlay $overlay vs. this rehearsal"
diff -u "$overlay/coordinator.flags" "$c" || true
diff -u "$overlay/worker.flags" "$w" || true
tp=$(sed -n 's/^--tp=//p' "$c" | tail -n1)
world=$(sed -n 's/^--world_size=//p' "$w" | tail -n1)
[ "$tp" = 2 ] && [ "$world" = 2 ] || { echo "rehearse-multinode: FAIL: expected --tp=2 and --world_size=2, got $tp/$world"; exit 1; }

# The environment the manifests give the pods (LWS sets the LWS_* variables; POD_IP from the downward API).
export TPSERVE_BIN="$bin" TPSERVE_FLAGS_DIR="$work/flags"
export NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_DEBUG=WARN
export LWS_GROUP_SIZE=2 LWS_LEADER_ADDRESS=127.0.0.1 POD_IP=127.0.0.1
echo "== leader pod: coordinator + rank 0; worker pod: rank 1 (ports api $port, worker $worker_port, metrics $metrics_port)"
"$launch" coordinator > "$work/coordinator.log" 2>&1 & pids+=($!)
LWS_WORKER_INDEX=0 "$launch" worker > "$work/rank0.log" 2>&1 & pids+=($!)
LWS_WORKER_INDEX=1 "$launch" worker > "$work/rank1.log" 2>&1 & pids+=($!)

fail() {
  echo "rehearse-multinode: FAIL: $*"
  for f in coordinator rank0 rank1; do echo "--- $f.log (tail)"; tail -n 20 "$work/$f.log" || true; done
  exit 1
}
ready=0
for _ in $(seq 600); do  # 120 s at most: stories260K loads in well under a second
  if "$health" "$metrics_port" /ready 127.0.0.1; then ready=1; break; fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || fail "process $p exited before the group was ready"; done
  sleep 0.2
done
[ $ready = 1 ] || fail "coordinator not ready on /ready within 120 s"
"$health" "$metrics_port" /health 127.0.0.1 || fail "/health did not answer 200 while ready"
echo "== ready; generating"

out=$("$bin" generate --server="127.0.0.1:$port" --prompt "Once upon a time" --temperature 0 \
  --max-new-tokens 20 --ignore-eos --json --timeout 120) || fail "generate failed"
python3 - "$reference" "$out" <<'PY' || fail "ids differ from the reference"
import json, sys
ref = json.load(open(sys.argv[1]))["cases"][0]
out = json.loads(sys.argv[2])
def ids(o, *names):
    for n in names:
        if n in o: return o[n]
    raise SystemExit("generate --json has none of %s: %s" % (names, sorted(o)))
want = ref["generated_ids"][:20]
got = ids(out, "generated_ids", "token_ids", "ids")
if "prompt_ids" in out and out["prompt_ids"] != ref["prompt_ids"]:
    raise SystemExit("prompt ids %s != reference %s" % (out["prompt_ids"], ref["prompt_ids"]))
print("reference:", want)
print("got:      ", got)
if got != want: raise SystemExit(1)
PY
proved=$(grep -c "proved the cluster token" "$work/coordinator.log" || true)
[ "$proved" = 2 ] || fail "expected both ranks to prove the cluster token, the coordinator log says $proved"
echo "== both ranks proved the cluster token; ids match the reference; draining with SIGTERM"
kill -TERM "${pids[0]}"
rc=0
wait "${pids[0]}" || rc=$?
[ $rc = 0 ] || fail "coordinator exited $rc after SIGTERM (expected a clean drain)"
echo "rehearse-multinode: PASS"
