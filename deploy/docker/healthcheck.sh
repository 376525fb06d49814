#!/usr/bin/env bash
# healthcheck: exits 0 when GET http://HOST:PORT/PATH answers 200. Bash /dev/tcp only, so images need no
# curl/wget. Used by the Dockerfiles' HEALTHCHECK and by scripts/rehearse-multinode.sh to wait for readiness.
#   healthcheck.sh [PORT=9090] [PATH=/ready] [HOST=127.0.0.1]
port=${1:-9090}
path=${2:-/ready}
host=${3:-127.0.0.1}
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || exit 1
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
IFS= read -r -t 5 status <&3 || exit 1
exec 3<&-
case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) exit 1 ;;
esac
