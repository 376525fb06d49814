#!/usr/bin/env bash
# The README's first command: install dependencies, build, start tpserve on the default model, show one chat
# request being answered, then keep serving in the foreground (Ctrl-C drains and stops).
#
# The default model is a GENERATED RANDOM-WEIGHT tiny Llama (build/models/tiny-random): it exercises the whole
# stack but its answers are gibberish. Serve real weights with MODEL=/path/to/tulu-v2.5-dpo-13b (a Hugging
# Face directory with config.json, tokenizer.model and *.safetensors or pytorch_model-*.bin).
# Environment: MODEL, TP (workers, default 1), PORT (50051), METRICS_PORT (9090), HTTP_PORT (OpenAI API, 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
TARGETS=tpserve bash scripts/build.sh

TP=${TP:-1}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9090}
HTTP_PORT=${HTTP_PORT:-8000}
args=(serve --tp "$TP" --host 127.0.0.1 --port "$PORT" --metrics-host 127.0.0.1 --metrics-port "$METRICS_PORT"
      --http-port "$HTTP_PORT")
if [ -n "${MODEL:-}" ]; then
  args+=(--model "$MODEL")
else
  echo "run: no MODEL given: serving a generated random-weight model (answers are meaningless)."
fi
./build/bin/tpserve "${args[@]}" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT INT TERM

# Wait for readiness (HTTP /ready on the metrics port), not for a fixed time.
for _ in $(seq 1 600); do
  if ! kill -0 $server 2>/dev/null; then echo "run: tpserve exited during startup" >&2; exit 1; fi
  if (exec 3<>/dev/tcp/127.0.0.1/"$METRICS_PORT" && printf 'GET /ready HTTP/1.0\r\n\r\n' >&3 && head -1 <&3 | grep -q 200) 2>/dev/null; then
    break
  fi
  sleep 0.5
done

echo
echo "run: asking: tpserve generate --chat 'Tell me a short story about a lighthouse.'"
./build/bin/tpserve generate --server 127.0.0.1:"$PORT" --chat "Tell me a short story about a lighthouse." \
  --max-new-tokens 48 --temperature 0.7 --seed 1
echo
echo "run: the same over the OpenAI-compatible HTTP API: curl 127.0.0.1:$HTTP_PORT/v1/chat/completions"
model=$(curl -s 127.0.0.1:"$HTTP_PORT"/v1/models | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p')
curl -s 127.0.0.1:"$HTTP_PORT"/v1/chat/completions -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"Tell me a short story about a lighthouse.\"}], \"max_tokens\": 48, \"temperature\": 0.7, \"seed\": 1}"
echo
echo "run: serving on 127.0.0.1:$PORT (gRPC), :$HTTP_PORT (OpenAI HTTP), metrics on :$METRICS_PORT/metrics. Ctrl-C to stop."
wait $server
