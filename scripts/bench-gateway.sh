#!/usr/bin/env bash
# The gateway under wrk on loopback, against the demo model (no simulated latency) and against
# nginx in front of the same model (run by `make bench-gateway`; see BENCHMARKS.md).
#
#   scripts/bench-gateway.sh            3 alternating rounds of 6 s runs (about 4 minutes)
#   scripts/bench-gateway.sh --quick    1 round of 2 s runs: proves every case executes
#   scripts/bench-gateway.sh --write    also puts the table into BENCHMARKS.md, replacing the
#                                       previous one in its "Gateway under wrk" section
#
# Cases, each a POST /v1/predict with a small JSON body over 32 kept-alive connections:
#   a  model     the demo model directly (`gateway model --latency-ms 0`)
#   b  nginx     Debian's nginx as reverse proxy: worker_processes auto, upstream keep-alive
#   c  gw-none   the gateway, no policy covering the path (no Redis call)
#   d  gw-1      one limit, high enough never to refuse: one RL.CHECK per request
#   e  gw-2      two limits: one RL.CHECKALL per request
#   f  gw-lease  one limit and max_concurrent: RL.CHECK, RL.ACQUIRE and RL.RELEASE
#   g  abusive   one API key far over a small limit (nearly every answer a 429), with the
#                gateway's local deny cache on (its default) and off ([deny_cache] enabled =
#                false); "n/a" when this build does not know [deny_cache]
#   h  envoy     Envoy 1.40 (.cache/envoy/envoy, `make servers`) as reverse proxy, no filter
#                but the router
#   i  envoy-1   Envoy with its ratelimit filter asking the gateway's rate limit service
#                (gateway serve --envoy-listen) one descriptor per request (never refused)
#   j  envoy-3   the same with three descriptors per request
# Then, without a proxy, the Redis side of a decision alone (scripts/bench-gateway/
# redis_pattern.py, 32 connections, one decision in flight on each, all patterns at the same
# fixed rate): envoyproxy/ratelimit's pattern (a pipelined INCRBY + EXPIRE per descriptor) and
# ours (one RL.CHECK / RL.CHECKALL), with one and three descriptors: redis-server CPU per
# decision, the time Redis spent executing the commands (INFO commandstats usec), and commands
# per decision.
# Every case runs once per round; odd rounds go a..g, even rounds g..a; the table shows the
# median over the rounds of req/s, p50 and p99 latency (from wrk's done() hook), the CPU time
# of the server process(es) under test per request (utime+stime from /proc/<pid>/stat, nginx:
# master and workers), and the module commands per request (from INFO commandstats).
# Then c and d again, paced with wrk's delay() hook to half of c's saturating rate: the p99
# the Redis check adds at half load.
#
# Nothing is pinned: wrk (one thread), the proxy, the model and redis-server share the cores,
# as they would on a small host. The gateway and the model log at their default level (info:
# the gateway writes an access line per request), nginx writes its access log; logs go to the
# work directory.
#
# Everything listens on free loopback ports and is stopped on exit. Exits non-zero when a case
# fails (socket errors, or non-2xx answers where none are expected).
#
# Needs: the release build (`make build`), redis-server, redis-cli, wrk, nginx, curl, python3,
# Envoy (`scripts/fetch-server.sh envoy`).
# Environment:
#   CARGO_TARGET_DIR   where the build is (default target)
#   BENCH_ROUNDS       rounds (default 3; --quick 1)
#   BENCH_DURATION     seconds per run (default 6; --quick 2)
#   BENCH_CONNECTIONS  wrk connections (default 32)
#   BENCH_THREADS      wrk threads (default 1)
#   BENCH_CASES        subset of cases, e.g. "b c d" (default all: a b c d e f g h i j)
#   ENVOY_BIN          the Envoy binary (default .cache/envoy/envoy)
#   BENCH_PATTERN_RATE decisions per second of the Redis-side comparison (default 8000)
#   BENCH_KEEP=1       keep the work directory (configs, logs) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
WRITE=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --write) WRITE=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench-gateway: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=$TARGET/release/gateway
MODULE=$TARGET/release/librl.so
LUA=$ROOT/scripts/bench-gateway/request.lua
NGINX_CONF_IN=$ROOT/scripts/bench-gateway/nginx.conf.in
if ((QUICK)); then
  ROUNDS=${BENCH_ROUNDS:-1}
  DURATION=${BENCH_DURATION:-2}
else
  ROUNDS=${BENCH_ROUNDS:-3}
  DURATION=${BENCH_DURATION:-6}
fi
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
CASES=${BENCH_CASES:-a b c d e f g h i j}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
ENVOY=${ENVOY_BIN:-$ROOT/.cache/envoy/envoy}
PATTERN=$ROOT/scripts/bench-gateway/redis_pattern.py

die() {
  echo "bench-gateway: $*" >&2
  exit 1
}
log() { echo "bench-gateway: $*" >&2; }

for f in "$BIN" "$MODULE" "$LUA" "$NGINX_CONF_IN"; do
  [[ -f $f ]] || die "$f is missing: run \`make build\` (or \`cargo build --release --workspace --lib --bins\`) first"
done
for tool in redis-server redis-cli wrk curl awk python3 "$NGINX"; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install redis-server redis-tools wrk nginx curl python3)"
done
if [[ " $CASES " == *" h "* || " $CASES " == *" i "* || " $CASES " == *" j "* ]]; then
  [[ -x $ENVOY ]] || die "no Envoy at $ENVOY: run \`scripts/fetch-server.sh envoy\` (or set ENVOY_BIN)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rl-bench-gateway.XXXXXX")
PIDS=()
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
    for f in "$WORK"/*.log; do
      [[ -f $f && $f != */access.log ]] || continue
      echo "--- $(basename "$f") (last lines) ---" >&2
      tail -n 5 "$f" >&2
    done
  fi
  if [[ ${BENCH_KEEP:-} == 1 ]]; then
    echo "bench-gateway: work directory kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "bench-gateway: interrupted" >&2; exit 130' INT TERM

USED_PORTS=" "
# Ports below the kernel's ephemeral range: one inside it may be the local end of an outgoing
# connection (wrk's, the gateway's to the model), which the probe does not see.
PORT_LOW=20000
PORT_HIGH=50000
if read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null && ((ephemeral_low > PORT_LOW + 1000)); then
  PORT_HIGH=$((ephemeral_low < PORT_HIGH ? ephemeral_low : PORT_HIGH))
fi
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
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME COMMAND...: COMMAND in the background, output in $WORK/NAME.log; its pid in LAST_PID.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# up NAME PID CHECK...: 0 once CHECK succeeds, 1 if PID exits first; dies after 10 s.
up() {
  local name=$1 pid=$2 _
  shift 2
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  die "$name did not come up in 10 s"
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID...: "utime stime" of the processes (all their threads), in clock ticks. The
# fields are counted after the ")" closing the command name.
cpu_ticks() {
  local user=0 sys=0 pid stat rest
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    user=$((user + ${12}))
    sys=$((sys + ${13}))
  done
  echo "$user $sys"
}

# rl_calls FILTER: calls of the module's commands matching FILTER (an awk regex on the name)
# since the server started.
rl_calls() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats |
    awk -F'[:,=]' -v re="$1" '{ name = tolower($1) } name ~ /^cmdstat_rl[.]/ && name ~ re { n += $3 } END { print n + 0 }'
}

# --- servers ---------------------------------------------------------------------------------

pick_port REDIS_PORT
pick_port MODEL_PORT
pick_port NGINX_PORT
export RUST_LOG=${RUST_LOG:-info}
export GATEWAY_KEY_SECRET="bench-secret-$RANDOM$RANDOM"

start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --loadmodule "$MODULE"
REDIS_PID=$LAST_PID
up redis "$REDIS_PID" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping || die "redis-server exited at start"

start model "$BIN" model --listen "127.0.0.1:$MODEL_PORT" --latency-ms 0 --token-latency-ms 0
MODEL_PID=$LAST_PID
up model "$MODEL_PID" curl -sf "http://127.0.0.1:$MODEL_PORT/healthz" || die "the model exited at start"

mkdir -p "$WORK/nginx"
NGINX_USER=""
# As root, nginx's workers would switch to its default user; they stay the current user.
(($(id -u) == 0)) && NGINX_USER="user $(id -un) $(id -gn);"
sed -e "s|@WORK@|$WORK/nginx|g" -e "s|@LISTEN@|127.0.0.1:$NGINX_PORT|" \
  -e "s|@UPSTREAM@|127.0.0.1:$MODEL_PORT|" -e "s|@USER@|$NGINX_USER|" "$NGINX_CONF_IN" >"$WORK/nginx/nginx.conf"
start nginx "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
NGINX_PID=$LAST_PID
up nginx "$NGINX_PID" curl -sf -X POST -d '{"text":"x"}' "http://127.0.0.1:$NGINX_PORT/v1/predict" ||
  die "nginx exited at start (see $WORK/nginx/error.log)"

# The gateways' configs: the common part, then each case's policies.
common_toml() {
  cat <<EOF
[upstream]
url = "http://127.0.0.1:$MODEL_PORT"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"
EOF
}
# No policy covers /v1/predict (one policy is required; it covers a path never asked for).
toml_c='[[policy]]
name = "unused"
paths = ["/unused"]
limit = 1
window = 1'
# A limit no run reaches: every request pays the check and is admitted.
toml_d='[[policy]]
name = "bench"
paths = ["/v1"]
limit = 1000000000
window = 1'
toml_e='[[policy]]
name = "bench"
paths = ["/v1"]
[[policy.limits]]
name = "second"
limit = 1000000000
window = 1
[[policy.limits]]
name = "day"
limit = 1000000000000
window = 86400'
toml_f="$toml_d
max_concurrent = 10000"
# 10 a minute: after the first 10 requests every one is refused.
toml_g='[[policy]]
name = "bench"
paths = ["/v1"]
limit = 10
window = 60'
toml_g_off="$toml_g
[deny_cache]
enabled = false"

declare -A URL PIDS_OF KEY_OF
URL[a]=http://127.0.0.1:$MODEL_PORT
PIDS_OF[a]=$MODEL_PID
URL[b]=http://127.0.0.1:$NGINX_PORT
# nginx's master and its workers.
nginx_pids() { echo "$NGINX_PID $(ps -o pid= --ppid "$NGINX_PID" | tr '\n' ' ')"; }
PIDS_OF[b]=$(nginx_pids)
KEY_OF[d]=bench-key-d
KEY_OF[e]=bench-key-e
KEY_OF[f]=bench-key-f
KEY_OF[g_on]=bench-abuser
KEY_OF[g_off]=bench-abuser

# start_gateway CASE TOML: 0 when it serves, 1 when it refused the config at start.
start_gateway() {
  local case=$1 toml=$2 gw_port
  pick_port gw_port
  { common_toml; echo "$toml"; } >"$WORK/gw-$case.toml"
  start "gw-$case" "$BIN" serve --config "$WORK/gw-$case.toml" --listen "127.0.0.1:$gw_port"
  if ! up "gw-$case" "$LAST_PID" curl -sf "http://127.0.0.1:$gw_port/healthz"; then
    wait "$LAST_PID" 2>/dev/null || true
    return 1
  fi
  URL[$case]=http://127.0.0.1:$gw_port
  PIDS_OF[$case]=$LAST_PID
}

# The rate limit service's limits for (i) and (j): three descriptors, none ever refusing.
cat >"$WORK/ratelimit.yaml" <<'YAML'
domain: bench
descriptors:
  - key: api_key
    rate_limit: {unit: second, requests_per_unit: 1000000000}
  - key: route
    value: predict
    descriptors:
      - key: api_key
        rate_limit: {unit: second, requests_per_unit: 1000000000}
  - key: everyone
    value: all
    rate_limit: {unit: second, requests_per_unit: 1000000000}
YAML

# envoy_bootstrap PORT ADMIN DESCRIPTORS [RLS_PORT]: an Envoy in front of the model; with 1 or 3
# descriptors, its ratelimit filter asks the service on RLS_PORT (failure_mode_deny: an error
# would show as a 500, never as an unlimited pass).
envoy_bootstrap() {
  local port=$1 admin=$2 descriptors=$3 rls=${4:-0}
  cat <<YAML
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
    - address: {socket_address: {address: 127.0.0.1, port_value: $port}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                http_filters:
YAML
  if ((descriptors > 0)); then
    cat <<YAML
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: bench
                      failure_mode_deny: true
                      timeout: 1s
                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service: {envoy_grpc: {cluster_name: ratelimit}}
YAML
  fi
  cat <<YAML
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                route_config:
                  virtual_hosts:
                    - name: model
                      domains: ["*"]
                      routes:
                        - match: {prefix: /}
                          route:
                            cluster: model
YAML
  if ((descriptors > 0)); then
    echo "                            rate_limits:"
    echo "                              - actions: [{request_headers: {header_name: x-api-key, descriptor_key: api_key}}]"
  fi
  if ((descriptors > 1)); then
    echo "                              - actions: [{generic_key: {descriptor_key: route, descriptor_value: predict}}, {request_headers: {header_name: x-api-key, descriptor_key: api_key}}]"
    echo "                              - actions: [{generic_key: {descriptor_key: everyone, descriptor_value: all}}]"
  fi
  cat <<YAML
  clusters:
    - name: model
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: model
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $MODEL_PORT}}}}]}]
YAML
  if ((descriptors > 0)); then
    cat <<YAML
    - name: ratelimit
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: ratelimit
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $rls}}}}]}]
YAML
  fi
}

RLS_PID=""
RLS_PORT=""
# start_rls: the gateway serving the rate limit service (its HTTP listener is not used).
start_rls() {
  [[ -n $RLS_PID ]] && return 0
  local gw_port
  pick_port gw_port
  pick_port RLS_PORT
  start rls "$BIN" serve --listen "127.0.0.1:$gw_port" --upstream "http://127.0.0.1:$MODEL_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT/" --envoy-listen "127.0.0.1:$RLS_PORT" --envoy-config "$WORK/ratelimit.yaml"
  RLS_PID=$LAST_PID
  up rls "$RLS_PID" curl -sf "http://127.0.0.1:$gw_port/healthz" || die "the rate limit service exited at start (see $WORK/rls.log)"
}

# start_envoy CASE DESCRIPTORS: Envoy for a case, asking the rate limit service when
# DESCRIPTORS > 0. Its CPU is counted with the service's: what a decision costs outside Redis.
start_envoy() {
  local case=$1 descriptors=$2 envoy_port admin_port
  pick_port envoy_port
  pick_port admin_port
  ((descriptors > 0)) && start_rls
  envoy_bootstrap "$envoy_port" "$admin_port" "$descriptors" "$RLS_PORT" >"$WORK/envoy-$case.yaml"
  start "envoy-$case" "$ENVOY" -c "$WORK/envoy-$case.yaml" --disable-hot-restart --log-level warning
  up "envoy-$case" "$LAST_PID" curl -sf "http://127.0.0.1:$admin_port/ready" ||
    die "Envoy of case $case exited at start (see $WORK/envoy-$case.log)"
  URL[$case]=http://127.0.0.1:$envoy_port
  PIDS_OF[$case]=$LAST_PID
  ((descriptors > 0)) && PIDS_OF[$case]="$LAST_PID $RLS_PID"
  return 0
}
KEY_OF[i]=bench-key-i
KEY_OF[j]=bench-key-j

RUN=()
DENY_CACHE=1
for c in $CASES; do
  case $c in
    a | b) RUN+=("$c") ;;
    c | d | e | f)
      var=toml_$c
      start_gateway "$c" "${!var}" || die "the gateway of case $c exited at start (see $WORK/gw-$c.log)"
      RUN+=("$c")
      ;;
    g)
      start_gateway g_on "$toml_g" || die "the gateway of case g exited at start"
      RUN+=(g_on)
      if start_gateway g_off "$toml_g_off"; then
        RUN+=(g_off)
      else
        DENY_CACHE=0
        log "this gateway does not accept [deny_cache] (see below): (g) without it is n/a"
        tail -n 3 "$WORK/gw-g_off.log" >&2
      fi
      ;;
    h) start_envoy h 0 && RUN+=(h) ;;
    i) start_envoy i 1 && RUN+=(i) ;;
    j) start_envoy j 3 && RUN+=(j) ;;
    *) die "unknown case $c in BENCH_CASES" ;;
  esac
done

# --- runs ------------------------------------------------------------------------------------

mkdir -p "$WORK/results"
# run CASE TAG [RATE]: one wrk run; appends "rps p50_ms p99_ms cpu_us_per_req rl_calls_per_req
# check_calls_per_req sys_us_per_req redis_cpu_us_per_req" to results/CASE.TAG.
run() {
  local case=$1 tag=$2 rate=${3:-0} url=${URL[$1]} out line
  local -a pids
  read -r -a pids <<<"${PIDS_OF[$1]}"
  local cpu0 cpu1 rl0 rl1 ck0 ck1 rd0 rd1 u0 s0 u1 s1 ru0 rs0 ru1 rs1
  cpu0=$(cpu_ticks "${pids[@]}")
  rd0=$(cpu_ticks "$REDIS_PID")
  rl0=$(rl_calls '.')
  ck0=$(rl_calls '^cmdstat_rl[.](check|checkall)$')
  out=$(BENCH_API_KEY=${KEY_OF[$case]:-} BENCH_RATE=$rate BENCH_THREADS=$THREADS \
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$LUA" "$url/v1/predict" 2>&1) ||
    die "wrk failed on $case: $out"
  cpu1=$(cpu_ticks "${pids[@]}")
  rd1=$(cpu_ticks "$REDIS_PID")
  rl1=$(rl_calls '.')
  ck1=$(rl_calls '^cmdstat_rl[.](check|checkall)$')
  echo "$out" >>"$WORK/wrk-$case.log"
  line=$(grep '^RESULT ' <<<"$out") || die "no RESULT from wrk on $case: $out"
  local requests duration_us p50_us p99_us mean_us status_errors socket_errors
  eval "$(sed -e 's/^RESULT //' -e 's/\([a-z0-9_]*\)=/\1=/g' <<<"$line")"
  ((requests > 0)) || die "$case: no request completed"
  ((socket_errors == 0)) || die "$case: $socket_errors socket errors (see $WORK/wrk-$case.log)"
  if [[ $case != g_* ]] && ((status_errors > 0)); then
    die "$case: $status_errors answers were not 2xx/3xx"
  fi
  read -r u0 s0 <<<"$cpu0"
  read -r u1 s1 <<<"$cpu1"
  read -r ru0 rs0 <<<"$rd0"
  read -r ru1 rs1 <<<"$rd1"
  awk -v n="$requests" -v d="$duration_us" -v p50="$p50_us" -v p99="$p99_us" -v cpu=$((u1 + s1 - u0 - s0)) \
    -v sys=$((s1 - s0)) -v redis=$((ru1 + rs1 - ru0 - rs0)) -v tck="$CLK_TCK" -v rl=$((rl1 - rl0)) -v ck=$((ck1 - ck0)) \
    'BEGIN { printf "%.0f %.3f %.3f %.1f %.4f %.4f %.1f %.1f\n", n / (d / 1e6), p50 / 1000, p99 / 1000, cpu / tck / n * 1e6, rl / n, ck / n, sys / tck / n * 1e6, redis / tck / n * 1e6 }' \
    >>"$WORK/results/$case.$tag"
}

# median CASE TAG FIELD: the median over the rounds of one field (1-based) of the results.
median() {
  awk -v f="$3" '{ print $f }' "$WORK/results/$1.$2" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "work directory $WORK; ${#RUN[@]} cases x $ROUNDS rounds x ${DURATION} s, wrk -t$THREADS -c$CONNS"
# Warm-up: connections, the gateways' upstream pools, the allocator, the CPU frequency.
for c in "${RUN[@]}"; do
  BENCH_API_KEY=${KEY_OF[$c]:-} wrk -t"$THREADS" -c"$CONNS" -d1s -s "$LUA" "${URL[$c]}/v1/predict" >/dev/null 2>&1 || true
done

for ((r = 1; r <= ROUNDS; r++)); do
  order=("${RUN[@]}")
  if ((r % 2 == 0)); then
    order=()
    for ((i = ${#RUN[@]} - 1; i >= 0; i--)); do order+=("${RUN[i]}"); done
  fi
  for c in "${order[@]}"; do
    run "$c" full
    log "round $r/$ROUNDS $c: $(tail -n 1 "$WORK/results/$c.full")"
  done
done

# The p99 the check adds at half load: c and d paced to half of c's saturating rate.
PACED=0
if [[ " ${RUN[*]} " == *" c "* && " ${RUN[*]} " == *" d "* ]]; then
  PACED=1
  HALF=$(awk -v r="$(median c full 1)" 'BEGIN { printf "%.0f", r / 2 }')
  for ((r = 1; r <= ROUNDS; r++)); do
    order=(c d)
    ((r % 2 == 0)) && order=(d c)
    for c in "${order[@]}"; do
      run "$c" paced "$HALF"
      log "paced round $r/$ROUNDS $c at $HALF req/s: $(tail -n 1 "$WORK/results/$c.paced")"
    done
  done
fi

# The Redis side of a decision alone: the reference service's pattern next to ours, alternating.
PATTERN_RATE=${BENCH_PATTERN_RATE:-8000}
# redis_commands: "calls usec" of the commands either pattern sends, since the server started.
redis_commands() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats |
    awk -F'[:,=]' '{ name = tolower($1) } name ~ /^cmdstat_(incrby|expire|rl[.]check|rl[.]checkall)$/ { n += $3; us += $5 }
      END { print n + 0, us + 0 }'
}
# pattern_run MODE DESCRIPTORS: appends "decisions_per_s redis_cpu_us_per_decision
# commands_per_decision command_us_per_decision" to results/pattern-MODE-DESCRIPTORS.
pattern_run() {
  local mode=$1 descriptors=$2 rd0 rd1 c0 c1 us0 us1 out decisions u0 s0 u1 s1
  rd0=$(cpu_ticks "$REDIS_PID")
  read -r c0 us0 <<<"$(redis_commands)"
  out=$(python3 "$PATTERN" "$REDIS_PORT" "$mode" "$descriptors" "$DURATION" "$PATTERN_RATE" 32 2>&1) ||
    die "redis_pattern.py $mode $descriptors failed: $out"
  rd1=$(cpu_ticks "$REDIS_PID")
  read -r c1 us1 <<<"$(redis_commands)"
  decisions=$(sed -n 's/^decisions=\([0-9]*\).*/\1/p' <<<"$out")
  ((${decisions:-0} > 0)) || die "redis_pattern.py $mode $descriptors made no decision: $out"
  read -r u0 s0 <<<"$rd0"
  read -r u1 s1 <<<"$rd1"
  awk -v n="$decisions" -v d="$DURATION" -v cpu=$((u1 + s1 - u0 - s0)) -v tck="$CLK_TCK" -v calls=$((c1 - c0)) \
    -v us=$((us1 - us0)) \
    'BEGIN { printf "%.0f %.2f %.2f %.3f\n", n / d, cpu / tck / n * 1e6, calls / n, us / n }' >>"$WORK/results/pattern-$mode-$descriptors"
}
PATTERNS=0
if [[ " $CASES " == *" i "* || " $CASES " == *" j "* ]]; then
  PATTERNS=1
  for ((r = 1; r <= ROUNDS; r++)); do
    order=("reference 1" "module 1" "reference 3" "module 3")
    ((r % 2 == 0)) && order=("module 3" "reference 3" "module 1" "reference 1")
    for p in "${order[@]}"; do
      # shellcheck disable=SC2086
      pattern_run $p
      log "pattern round $r/$ROUNDS $p: $(tail -n 1 "$WORK/results/pattern-${p// /-}")"
    done
  done
fi
# pmedian NAME FIELD: the median over the rounds of one field of a pattern's results.
pmedian() {
  awk -v f="$2" '{ print $f }' "$WORK/results/pattern-$1" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- report ----------------------------------------------------------------------------------

fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
has() { [[ -f $WORK/results/$1.full ]]; }

declare -A LABEL=(
  [a]="(a) model direct"
  [b]="(b) nginx reverse proxy"
  [c]="(c) gateway, no policy"
  [d]="(d) gateway, one limit"
  [e]="(e) gateway, two limits (RL.CHECKALL)"
  [f]="(f) gateway, one limit + max_concurrent"
  [g_on]="(g) abusive key, deny cache on"
  [g_off]="(g) abusive key, deny cache off"
  [h]="(h) Envoy reverse proxy, no limit"
  [i]="(i) Envoy + this rate limit service, 1 descriptor"
  [j]="(j) Envoy + this rate limit service, 3 descriptors"
)
((DENY_CACHE)) || LABEL[g_on]="(g) abusive key (no deny cache in this build)"
NGINX_RPS=$(has b && median b full 1 || echo 0)
C_RPS=$(has c && median c full 1 || echo 0)

table() {
  local commit dirty cpu
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " + uncommitted changes" || true)
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') at $commit$dirty: $(nproc) cores ($cpu), load before the run $LOAD_BEFORE;"
  echo "$($NGINX -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n 1 | awk '{ print "wrk " $2 }'), redis-server $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/');"
  echo "medians of $ROUNDS alternating rounds, ${DURATION} s per run, wrk -t$THREADS -c$CONNS, nothing pinned."
  echo
  echo "| case | req/s | vs nginx | p50 ms | p99 ms | CPU µs/req | of which kernel | redis-server µs/req | RL cmds/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  local c
  for c in a b c d e f g_on g_off h i j; do
    if has "$c"; then
      printf '| %s | %.0f | %s | %.2f | %.2f | %.1f | %.1f | %.1f | %.3f |\n' "${LABEL[$c]}" "$(median "$c" full 1)" \
        "$(fmt_ratio "$(median "$c" full 1)" "$NGINX_RPS")" "$(median "$c" full 2)" "$(median "$c" full 3)" \
        "$(median "$c" full 4)" "$(median "$c" full 7)" "$(median "$c" full 8)" "$(median "$c" full 5)"
    elif [[ $c == g_off && " $CASES " == *" g "* ]]; then
      echo "| ${LABEL[$c]} | n/a | | | | | | | |"
    fi
  done
  echo
  echo "CPU µs/req: utime+stime of the process under test (the model for (a), nginx's master and"
  echo "workers for (b), the gateway otherwise) over the run, divided by the requests answered."
  echo "Of which kernel: the stime part. redis-server µs/req: the server's CPU time over the run"
  echo "per request (it shares the cores). RL cmds/req: every module command (RL.*) Redis ran"
  echo "during the run, per request. For (h) CPU µs/req is Envoy's; for (i) and (j), Envoy's and"
  echo "the rate limit service's (the gateway process serving it) together."
  if ((PATTERNS)); then
    echo
    echo "The Redis side of one decision alone (scripts/bench-gateway/redis_pattern.py: 32"
    echo "connections, one decision in flight on each, $PATTERN_RATE decisions/s for every pattern, the same"
    echo "client): redis-server's CPU time (utime+stime) per decision, of which executing the commands"
    echo "(INFO commandstats usec; the rest is reading, parsing, replying and the event loop):"
    echo
    echo "| pattern | descriptors | decisions/s | redis-server CPU µs/decision | executing commands µs/decision | Redis commands/decision |"
    echo "|---|---:|---:|---:|---:|---:|"
    local p name n label
    for p in "reference 1" "module 1" "reference 3" "module 3"; do
      name=${p% *} n=${p#* }
      label="envoyproxy/ratelimit's (pipelined INCRBY + EXPIRE per descriptor)"
      [[ $name == module ]] && label="this service's (one RL.CHECK / RL.CHECKALL)"
      printf '| %s | %s | %.0f | %.2f | %.3f | %.2f |\n' "$label" "$n" "$(pmedian "$name-$n" 1)" "$(pmedian "$name-$n" 2)" \
        "$(pmedian "$name-$n" 4)" "$(pmedian "$name-$n" 3)"
    done
  fi
  if ((PACED)); then
    local c50 c99 d50 d99 crate drate
    c50=$(median c paced 2) c99=$(median c paced 3) d50=$(median d paced 2) d99=$(median d paced 3)
    crate=$(median c paced 1) drate=$(median d paced 1)
    echo
    echo "At half load (paced with wrk's delay() to $HALF req/s, half of (c)'s median):"
    echo
    echo "| case | req/s | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|"
    printf '| %s | %.0f | %.2f | %.2f |\n' "${LABEL[c]}" "$crate" "$c50" "$c99"
    printf '| %s | %.0f | %.2f | %.2f |\n' "${LABEL[d]}" "$drate" "$d50" "$d99"
    echo
    awk -v c="$c99" -v d="$d99" 'BEGIN { printf "p99 added by one limit at half load: %.2f ms.\n", d - c }'
  fi
  echo
  echo "Targets:"
  target() { # NAME VALUE OP BOUND UNIT
    awk -v name="$1" -v v="$2" -v op="$3" -v b="$4" -v unit="$5" 'BEGIN {
      ok = (op == ">=") ? (v >= b) : (v <= b)
      printf "- %s: %s%s (target %s %s%s) %s\n", name, v, unit, op, b, unit, ok ? "holds" : "MISSED" }'
  }
  if has b && has c; then
    target "(c) / (b) req/s" "$(awk -v a="$C_RPS" -v b="$NGINX_RPS" 'BEGIN { printf "%.2f", a / b }')" ">=" 0.9 x
  fi
  if has c && has d; then
    target "(d) / (c) req/s" "$(awk -v a="$(median d full 1)" -v b="$C_RPS" 'BEGIN { printf "%.2f", a / b }')" ">=" 0.85 x
  fi
  if ((PACED)); then
    target "p99 added by limiting at half load" "$(awk -v c="$c99" -v d="$d99" 'BEGIN { printf "%.2f", d - c }')" "<=" 1 " ms"
  fi
  if has g_on && has g_off; then
    local on off
    on=$(median g_on full 6) off=$(median g_off full 6)
    target "(g) fewer RL.CHECK/RL.CHECKALL calls with the deny cache" \
      "$(awk -v on="$on" -v off="$off" 'BEGIN { printf "%.1f", (off > 0 ? (1 - on / off) * 100 : 0) }')" ">=" 90 "%"
  elif [[ " $CASES " == *" g "* ]]; then
    echo "- (g) fewer Redis calls with the deny cache: n/a (this build has no [deny_cache])"
  fi
  if has i; then
    # Up to 32 requests are still in flight when wrk stops: Redis saw them, wrk does not count them.
    target "(i) Redis calls per decision, 1 descriptor (1 + requests in flight at the end)" "$(median i full 5)" "<=" 1.01 ""
  fi
  if has j; then
    target "(j) Redis calls per decision, 3 descriptors (1 + requests in flight at the end)" "$(median j full 5)" "<=" 1.01 ""
  fi
  if ((PATTERNS)); then
    target "Redis CPU per decision, ours / reference, 1 descriptor" \
      "$(awk -v a="$(pmedian module-1 2)" -v b="$(pmedian reference-1 2)" 'BEGIN { printf "%.2f", a / b }')" "<=" 1 x
    target "Redis CPU per decision, ours / reference, 3 descriptors" \
      "$(awk -v a="$(pmedian module-3 2)" -v b="$(pmedian reference-3 2)" 'BEGIN { printf "%.2f", a / b }')" "<=" 0.5 x
    target "executing the commands, ours / reference, 1 descriptor" \
      "$(awk -v a="$(pmedian module-1 4)" -v b="$(pmedian reference-1 4)" 'BEGIN { printf "%.2f", a / b }')" "<=" 1 x
    target "executing the commands, ours / reference, 3 descriptors" \
      "$(awk -v a="$(pmedian module-3 4)" -v b="$(pmedian reference-3 4)" 'BEGIN { printf "%.2f", a / b }')" "<=" 0.5 x
  fi
  if has d && has h; then
    target "(d) gateway with one limit / (h) Envoy with none, req/s" \
      "$(awk -v a="$(median d full 1)" -v b="$(median h full 1)" 'BEGIN { printf "%.2f", a / b }')" ">=" 1 x
  fi
  if has a && has b; then
    echo
    echo "The model alone answers $(fmt_ratio "$(median a full 1)" "$NGINX_RPS") nginx's rate: it is not what limits (b) to (g)."
  fi
}

TABLE=$(table)
echo
echo "$TABLE"

if ((WRITE)); then
  BENCH_MD=$ROOT/BENCHMARKS.md
  BEGIN_MARK='<!-- bench-gateway:begin (written by scripts/bench-gateway.sh --write) -->'
  END_MARK='<!-- bench-gateway:end -->'
  printf '%s\n%s\n%s\n' "$BEGIN_MARK" "$TABLE" "$END_MARK" >"$WORK/section.md"
  if grep -qF "$BEGIN_MARK" "$BENCH_MD" 2>/dev/null; then
    # Replace what is between the markers; the rest of the file (and of the section) stays.
    awk -v begin="$BEGIN_MARK" -v end="$END_MARK" -v file="$WORK/section.md" '
      $0 == begin { while ((getline line < file) > 0) print line; skip = 1; next }
      $0 == end { skip = 0; next }
      !skip { print }' "$BENCH_MD" >"$WORK/BENCHMARKS.md"
    cat "$WORK/BENCHMARKS.md" >"$BENCH_MD"
  else
    { echo; echo "## Gateway under wrk"; echo; echo "\`make bench-gateway\` (scripts/bench-gateway.sh --write)."; echo; cat "$WORK/section.md"; } >>"$BENCH_MD"
  fi
  log "wrote the table into $BENCH_MD"
fi
