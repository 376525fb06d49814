#!/usr/bin/env bash
# tpserve-launch: container entrypoint that turns a pod's place in the topology (role, LeaderWorkerSet index or
# StatefulSet ordinal) into `tpserve` flags, so every rank of a group runs the same manifest.
#
#   tpserve-launch serve|coordinator|worker [extra tpserve flags]
#
# Flags come from flag files in $TPSERVE_FLAGS_DIR (default /etc/tpserve, the tpserve-flags ConfigMap):
#   serve.flags, coordinator.flags, worker.flags  -- one --flag_name=value per line (absl reads flag files
#   verbatim, so names use underscores there; '#' lines are comments).
#   <role>.<part>.flags                           -- read after <role>.flags, in name order: what the kustomize
#                                                    components add (worker-auth, api-key)
# worker rank, first that is set:
#   TPSERVE_RANK                      explicit
#   LWS_WORKER_INDEX                  LeaderWorkerSet: 0 on the leader, 1..size-1 on the workers
#   TPSERVE_RANK_FROM_HOSTNAME=1      StatefulSet: the ordinal after the last '-' of $HOSTNAME, plus
#                                     TPSERVE_RANK_OFFSET (the worker StatefulSet starts at rank 1)
# world size: --world_size in worker.flags (checked against LWS_GROUP_SIZE when LeaderWorkerSet sets it).
# coordinator: ${TPSERVE_COORDINATOR_HOST:-${LWS_LEADER_ADDRESS:-127.0.0.1}}:<--worker_port of coordinator.flags>.
# Gloo address: TPSERVE_COMM_HOST, else POD_IP (downward API), else the worker's default (hostname).
# Bad topology exits 2 with a message naming the variable, before tpserve starts.
set -euo pipefail

bin=${TPSERVE_BIN:-tpserve}
flags_dir=${TPSERVE_FLAGS_DIR:-/etc/tpserve}

die() { echo "tpserve-launch: $*" >&2; exit 2; }

# flag_value FILE NAME DEFAULT: the last --NAME=value in FILE (the one absl keeps), else DEFAULT.
flag_value() {
  local v=""
  if [ -f "$1" ]; then v=$(sed -n "s/^[[:space:]]*--$2=//p" "$1" | tail -n 1); fi
  echo "${v:-$3}"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# flagfiles ROLE: sets the array ff to --flagfile=... for the role's flag file and its <role>.*.flags parts.
# Without <role>.flags (plain `docker run ... serve --model=...`) the command-line flags alone apply; say so,
# since in Kubernetes it means a missing mount.
flagfiles() {
  local f="$flags_dir/$1.flags" part
  ff=()
  if [ -f "$f" ]; then
    ff+=("--flagfile=$f")
  else
    echo "tpserve-launch: no $f (tpserve-flags ConfigMap not mounted?): using command-line flags only" >&2
  fi
  for part in "$flags_dir/$1".*.flags; do
    if [ -f "$part" ]; then ff+=("--flagfile=$part"); fi
  done
}

[ $# -ge 1 ] || die "usage: tpserve-launch serve|coordinator|worker [extra tpserve flags]"
role=$1
shift

case "$role" in
  serve|coordinator)
    flagfiles "$role"
    exec "$bin" "$role" ${ff[@]+"${ff[@]}"} "$@"
    ;;
  worker)
    flagfiles worker
    world=$(flag_value "$flags_dir/worker.flags" world_size 1)
    is_uint "$world" && [ "$world" -ge 1 ] || die "--world_size in worker.flags must be a positive integer, got '$world'"
    if [ -n "${TPSERVE_RANK:-}" ]; then
      rank=$TPSERVE_RANK; from="TPSERVE_RANK"
    elif [ -n "${LWS_WORKER_INDEX:-}" ]; then
      rank=$LWS_WORKER_INDEX; from="LWS_WORKER_INDEX"
    elif [ "${TPSERVE_RANK_FROM_HOSTNAME:-0}" = 1 ]; then
      host=${HOSTNAME:-$(hostname)}
      ordinal=${host##*-}
      is_uint "$ordinal" || die "TPSERVE_RANK_FROM_HOSTNAME=1 but hostname '$host' does not end in -<ordinal>"
      offset=${TPSERVE_RANK_OFFSET:-0}
      is_uint "$offset" || die "TPSERVE_RANK_OFFSET must be a non-negative integer, got '$offset'"
      rank=$((ordinal + offset)); from="hostname $host + TPSERVE_RANK_OFFSET=$offset"
    else
      die "no rank: set TPSERVE_RANK, LWS_WORKER_INDEX or TPSERVE_RANK_FROM_HOSTNAME=1"
    fi
    is_uint "$rank" || die "rank from $from must be a non-negative integer, got '$rank'"
    [ "$rank" -lt "$world" ] || die "rank $rank (from $from) is outside --world_size=$world of worker.flags"
    if [ -n "${LWS_GROUP_SIZE:-}" ] && [ "$LWS_GROUP_SIZE" != "$world" ]; then
      die "LeaderWorkerSet size LWS_GROUP_SIZE=$LWS_GROUP_SIZE differs from --world_size=$world in worker.flags"
    fi
    coord_host=${TPSERVE_COORDINATOR_HOST:-${LWS_LEADER_ADDRESS:-127.0.0.1}}
    coord_port=$(flag_value "$flags_dir/coordinator.flags" worker_port 50052)
    args=(${ff[@]+"${ff[@]}"} "--rank=$rank" "--coordinator=$coord_host:$coord_port")
    comm=${TPSERVE_COMM_HOST:-${POD_IP:-}}
    if [ -n "$comm" ]; then args+=("--comm_host=$comm"); fi
    echo "tpserve-launch: worker rank $rank/$world (from $from), coordinator $coord_host:$coord_port" >&2
    exec "$bin" worker "${args[@]}" "$@"
    ;;
  *)
    die "unknown role '$role' (serve, coordinator or worker)"
    ;;
esac
