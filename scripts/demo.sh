#!/usr/bin/env bash
# The whole story on loopback, no manual steps (run by `make demo` after the build):
#   redis-server with the repo's redis.conf and the ratelimit module,
#   the demo model API (gateway model), the gateway in front of it (5 requests per 10 s),
#   then the client: 8 requests (admitted, then rate limited), the headers of one answer,
#   a round that waits for Retry-After and goes on, and a steady client over the limit charted
#   with --plot as an SVG ($TARGET/demo/run.svg, kept after the demo);
#   then an LLM route (a second gateway, 10 requests and 200 tokens a minute, in front of the
#   model's OpenAI-compatible /v1/chat/completions): a client stopped by its token budget
#   before its request budget, the refund of unused tokens in x-ratelimit-remaining-tokens,
#   the 429 naming the limit, and a streamed answer. That part runs only when the gateway
#   accepts `kind = "openai"` policies; an older build skips it with a note.
# Everything is stopped on exit, on error and on Ctrl-C. Ports are picked free at start.
#
# Needs: the release build (`cargo build --release --workspace`), redis-server, curl.
# Env: CARGO_TARGET_DIR (default target), DEMO_KEEP=1 keeps the work directory with the logs.
# Writes: $TARGET/demo/run.svg (the chart of step 7; outside the work directory, which is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=$TARGET/release/gateway
MODULE=$TARGET/release/librl.so
PLOT=$TARGET/demo/run.svg

bold() { if [[ -t 1 ]]; then printf '\n\033[1m%s\033[0m\n' "$*"; else printf '\n%s\n' "$*"; fi; }
die() { echo "demo: $*" >&2; exit 1; }

for f in "$BIN" "$MODULE"; do
  [[ -f $f ]] || die "$f is missing: run \`make build\` (or \`cargo build --release --workspace\`) first"
done
command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server, or run scripts/install-deps.sh)"
command -v curl >/dev/null || die "curl is not installed (apt-get install curl)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rl-demo.XXXXXX")
PIDS=()
NAMES=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  if ((status != 0 && status != 130)); then
    for log in "$WORK"/*.log; do
      [[ -f $log ]] || continue
      echo "--- $(basename "$log") (last lines) ---" >&2
      tail -n 15 "$log" >&2
    done
  fi
  if [[ ${DEMO_KEEP:-} == 1 ]]; then
    echo "demo: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  if ((${#PIDS[@]} > 0)); then
    echo "Stopped ${NAMES[*]}."
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

USED_PORTS=" "
# Ports are picked below the kernel's ephemeral range: a port there may be the local end of
# some outgoing connection (a test suite running beside the demo), which the probe below does
# not see but which makes the bind fail.
PORT_LOW=20000
PORT_HIGH=50000
if read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null && ((ephemeral_low > PORT_LOW + 1000)); then
  PORT_HIGH=$((ephemeral_low < PORT_HIGH ? ephemeral_low : PORT_HIGH))
fi
# pick_port VAR: a loopback port nobody listens on, not handed out before.
pick_port() {
  local port _
  for _ in $(seq 1 500); do
    port=$((PORT_LOW + RANDOM % (PORT_HIGH - PORT_LOW)))
    [[ $USED_PORTS == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      USED_PORTS+="$port "
      printf -v "$1" '%s' "$port"
      return 0
    fi
  done
  die "no free port found"
}

# start NAME COMMAND...: runs COMMAND in the background, output in $WORK/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}

# wait_until NAME PID CHECK...: polls CHECK for up to 10 s while PID lives.
wait_until() {
  local name=$1 pid=$2 _
  shift 2
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$name exited at start (see its log below)"
    sleep 0.05
  done
  die "$name did not come up in 10 s"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# up_or_exited NAME PID URL: 0 when URL answers, 1 when PID exited first (within 10 s).
up_or_exited() {
  local name=$1 pid=$2 url=$3 _
  for _ in $(seq 1 200); do
    if curl -sf "$url" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  die "$name did not come up in 10 s"
}

pick_port REDIS_PORT
pick_port MODEL_PORT
pick_port GATEWAY_PORT
pick_port CHAT_PORT
GATEWAY=http://127.0.0.1:$GATEWAY_PORT
export GATEWAY_KEY_SECRET="demo-secret-$RANDOM$RANDOM"
export RUST_LOG=${RUST_LOG:-warn}

bold "1. Redis with the ratelimit module (redis.conf, port $REDIS_PORT)"
# The repo's redis.conf, with the module at its built path and the data files in the work
# directory (not in the repo). The port is given on the command line.
sed -e "s|^loadmodule .*|loadmodule $MODULE|" -e "s|^dir .*|dir $WORK|" redis.conf >"$WORK/redis.conf"
grep -q '^loadmodule' "$WORK/redis.conf" || echo "loadmodule $MODULE" >>"$WORK/redis.conf"
start redis redis-server "$WORK/redis.conf" --port "$REDIS_PORT" --daemonize no
wait_until redis "${PIDS[-1]}" port_open "$REDIS_PORT"
echo "redis-server $WORK/redis.conf --port $REDIS_PORT   (module: $MODULE)"

bold "2. The demo model API on port $MODEL_PORT"
start model "$BIN" model --listen "127.0.0.1:$MODEL_PORT" --latency-ms 20
wait_until model "${PIDS[-1]}" curl -sf "http://127.0.0.1:$MODEL_PORT/healthz"
echo "gateway model --listen 127.0.0.1:$MODEL_PORT --latency-ms 20"
echo "\$ curl -s -X POST http://127.0.0.1:$MODEL_PORT/v1/predict -d '{\"text\": \"I love this gateway\"}'"
curl -s -X POST "http://127.0.0.1:$MODEL_PORT/v1/predict" -H 'content-type: application/json' \
  -d '{"text": "I love this gateway"}'
echo

bold "3. The gateway on port $GATEWAY_PORT: 5 requests per 10 s per API key"
start gateway "$BIN" serve --config gateway/gateway.toml --listen "127.0.0.1:$GATEWAY_PORT" \
  --upstream "http://127.0.0.1:$MODEL_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT/" --limit 5 --window 10
wait_until gateway "${PIDS[-1]}" curl -sf "$GATEWAY/readyz"
echo "gateway serve --config gateway/gateway.toml --listen 127.0.0.1:$GATEWAY_PORT --upstream http://127.0.0.1:$MODEL_PORT \\"
echo "              --redis-url redis://127.0.0.1:$REDIS_PORT/ --limit 5 --window 10"

bold "4. The client sends 8 requests at once: 5 are admitted, then the limit holds"
"$BIN" client --url "$GATEWAY/v1/predict" --count 8 --api-key demo-key-1

bold "5. What the gateway answers when a client is over the limit"
echo "\$ curl -si -X POST $GATEWAY/v1/predict -H 'Authorization: Bearer demo-key-1' -d '{\"text\": \"hello\"}'"
curl -si -X POST "$GATEWAY/v1/predict" -H 'Authorization: Bearer demo-key-1' \
  -H 'content-type: application/json' -d '{"text": "hello"}' | tr -d '\r' | grep -iv '^date:'

bold "6. Another API key has its own budget"
"$BIN" client --url "$GATEWAY/v1/predict" --count 2 --api-key demo-key-2

bold "7. The client waits for Retry-After and goes on"
"$BIN" client --url "$GATEWAY/v1/predict" --count 4 --wait --api-key demo-key-1

bold "7b. A client sending 3 requests a second for 8 s against 5 per 10 s, charted (--plot)"
# A fresh key: its burst of 5 goes at once, then one request in two seconds gets through.
mkdir -p "$(dirname "$PLOT")"
"$BIN" client --url "$GATEWAY/v1/predict" --count 24 --rate 3 --api-key demo-key-3 --plot "$PLOT"
[[ -s $PLOT ]] || die "the client wrote no chart to $PLOT"
echo "Chart of the run: $PLOT"
echo "(open it in a browser: admitted and limited requests per second, the limit as a dashed line)"

bold "8. An LLM route: requests and tokens per minute, tokens reserved then settled"
# A second gateway with one OpenAI-style policy on /v1/chat/completions: 10 requests and 200
# tokens a minute per API key. Before forwarding it reserves prompt tokens (characters / 4,
# rounded up) + max_tokens on the token limit, 1 on the request limit, in one atomic call; after
# a non-streamed answer it settles on usage.total_tokens before writing the headers.
cat >"$WORK/chat.toml" <<'TOML'
[[policy]]
name = "chat"
paths = ["/v1/chat/completions"]
kind = "openai"
limit = 10
window = 60

[[policy.limits]]
name = "tokens"
unit = "tokens"
limit = 200
window = 60
TOML
CHAT=http://127.0.0.1:$CHAT_PORT
PROMPT="Please summarise the rate limits of this gateway for me"
start chat-gateway "$BIN" serve --config "$WORK/chat.toml" --listen "127.0.0.1:$CHAT_PORT" \
  --upstream "http://127.0.0.1:$MODEL_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT/"
if ! up_or_exited chat-gateway "${PIDS[-1]}" "$CHAT/readyz"; then
  if grep -qi 'unknown field\|unknown variant' "$WORK/chat-gateway.log"; then
    echo "Skipped: this gateway build does not accept LLM policies (kind = \"openai\" with"
    echo "[[policy.limits]] unit = \"tokens\"): $(grep -i 'unknown' "$WORK/chat-gateway.log" | tail -n 1)"
    bold "Done: Redis, the model and the gateway are stopped."
    exit 0
  fi
  die "chat-gateway exited at start (see its log below)"
fi
echo "gateway serve --config chat.toml --listen 127.0.0.1:$CHAT_PORT ...   with chat.toml:"
sed 's/^/    /' "$WORK/chat.toml"
echo
echo "The model answers chat completions itself, with a usage (prompt: 55 characters -> 14 tokens;"
echo "reply: 4 words + the 10 words of the message = 14 tokens):"
echo "\$ curl -s http://127.0.0.1:$MODEL_PORT/v1/chat/completions -d '{\"model\": \"lexicon-chat-v1\", \"messages\": [{\"role\": \"user\", \"content\": \"$PROMPT\"}], \"max_tokens\": 64}'"
curl -s -X POST "http://127.0.0.1:$MODEL_PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d "{\"model\": \"lexicon-chat-v1\", \"messages\": [{\"role\": \"user\", \"content\": \"$PROMPT\"}], \"max_tokens\": 64}"
echo

bold "9. Through the gateway: the token budget runs out before the request budget"
echo "Each request reserves 14 + 64 (max_tokens) = 78 tokens and uses 28: the 50 unused come back"
echo "before the answer, so the tokens left drop by 28 a request, not 78. With 60 left, the next"
echo "78 do not fit: refused by the tokens limit while 5 requests of the 10 remain."
"$BIN" client --chat --url "$CHAT/v1/chat/completions" --count 7 --max-tokens 64 --prompt "$PROMPT" \
  --api-key demo-chat-1

bold "10. The 429 says which limit refused"
echo "\$ curl -si -X POST $CHAT/v1/chat/completions -H 'Authorization: Bearer demo-chat-1' -d '{... \"max_tokens\": 64}'"
curl -si -X POST "$CHAT/v1/chat/completions" -H 'Authorization: Bearer demo-chat-1' -H 'content-type: application/json' \
  -d "{\"model\": \"lexicon-chat-v1\", \"messages\": [{\"role\": \"user\", \"content\": \"$PROMPT\"}], \"max_tokens\": 64}" |
  tr -d '\r' | grep -iv '^date:'

bold "11. Streamed answers (server-sent events): the usage comes in the last chunk"
echo "The headers go out before the stream, so they show the reservation (78), not the 28 used."
"$BIN" client --chat --stream --url "$CHAT/v1/chat/completions" --count 2 --max-tokens 64 --prompt "$PROMPT" \
  --api-key demo-chat-2

bold "12. What the gateways count, for Prometheus (GET /metrics; series at 0 left out here)"
{ curl -s "$GATEWAY/metrics"; curl -s "$CHAT/metrics"; } |
  grep -E '^gateway_(requests_total|deny_cache_hits_total|tokens_[a-z]+_total)' | grep -v ' 0$' || true

bold "Done: Redis, the model and the gateways are stopped. The chart of step 7b: $PLOT"
