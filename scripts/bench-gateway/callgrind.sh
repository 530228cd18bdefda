#!/usr/bin/env bash
# Instructions per request of one gateway configuration, under valgrind's callgrind (the
# profile behind BENCHMARKS.md's "Gateway under wrk" findings; reproducible on a noisy
# machine, unlike timings). Starts redis-server with the module and the demo model on free
# ports, the gateway under callgrind with instrumentation off, turns it on once the gateway
# answers, sends SECONDS of wrk load (-t1 -c8), turns it off, and prints Ir per request and
# the top functions (inclusive) into OUT.txt (the raw profile is OUT.out).
#
#   scripts/bench-gateway/callgrind.sh CASE [SECONDS] [OUT]
#     CASE: c (no policy), d (one limit), g (an abusive key, deny cache default)
# Env: GATEWAY_BIN (default $CARGO_TARGET_DIR/release/gateway), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CASE=${1:?usage: callgrind.sh CASE [SECONDS] [OUT]}
SECONDS_LOAD=${2:-10}
OUT=${3:-/tmp/callgrind-gateway-$CASE}
TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=${GATEWAY_BIN:-$TARGET/release/gateway}
MODULE=$TARGET/release/librl.so
LUA=$ROOT/scripts/bench-gateway/request.lua

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rl-callgrind.XXXXXX")
PIDS=()
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do wait "${PIDS[i]}" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { echo $((20000 + RANDOM % 10000)); }
wait_for() { for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; exit 1; }

REDIS_PORT=$(port) MODEL_PORT=$(port) GW_PORT=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --dir "$WORK" --loadmodule "$MODULE" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
"$BIN" model --listen "127.0.0.1:$MODEL_PORT" --latency-ms 0 >"$WORK/model.log" 2>&1 &
PIDS+=($!)
case $CASE in
  c) POLICY='paths = ["/unused"]
limit = 1
window = 1' KEY= ;;
  d) POLICY='paths = ["/v1"]
limit = 1000000000
window = 1' KEY=bench-key-d ;;
  g) POLICY='paths = ["/v1"]
limit = 10
window = 60' KEY=bench-abuser ;;
  *) echo "unknown case $CASE" >&2; exit 2 ;;
esac
cat >"$WORK/gw.toml" <<TOML
[upstream]
url = "http://127.0.0.1:$MODEL_PORT"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"
[[policy]]
name = "bench"
$POLICY
TOML
wait_for curl -sf "http://127.0.0.1:$MODEL_PORT/healthz"
GATEWAY_KEY_SECRET=callgrind-secret RUST_LOG=${RUST_LOG:-info} valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$OUT.out" "$BIN" serve --config "$WORK/gw.toml" --listen "127.0.0.1:$GW_PORT" \
  >"$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_for curl -sf "http://127.0.0.1:$GW_PORT/healthz"
# One request before counting: the upstream connection and first-use allocations.
BENCH_API_KEY=$KEY wrk -t1 -c8 -d1s -s "$LUA" "http://127.0.0.1:$GW_PORT/v1/predict" >/dev/null
callgrind_control -i on "$GW_PID" >/dev/null
RESULT=$(BENCH_API_KEY=$KEY wrk -t1 -c8 -d"${SECONDS_LOAD}s" -s "$LUA" "http://127.0.0.1:$GW_PORT/v1/predict" | grep '^RESULT')
callgrind_control -i off "$GW_PID" >/dev/null
kill -TERM "$GW_PID"
wait "$GW_PID" 2>/dev/null || true
REQUESTS=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$RESULT")
TOTAL=$(callgrind_annotate "$OUT.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
{
  echo "case $CASE: $REQUESTS requests, $TOTAL Ir, $((TOTAL / REQUESTS)) Ir per request ($RESULT)"
  callgrind_annotate --inclusive=yes "$OUT.out" 2>/dev/null | sed -E 's#/root/.cargo/registry/src/index.crates.io-[0-9a-f]+/##; s#/rustc/[0-9a-f]+/##' |
    sed -n '/^Ir/,$p' | head -150
  echo "--- self"
  callgrind_annotate "$OUT.out" 2>/dev/null | sed -E 's#/root/.cargo/registry/src/index.crates.io-[0-9a-f]+/##; s#/rustc/[0-9a-f]+/##' |
    sed -n '/^Ir/,$p' | head -60
} >"$OUT.txt"
head -n 1 "$OUT.txt"
