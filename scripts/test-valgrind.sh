#!/usr/bin/env bash
# `make test-valgrind`: the module's integration suite (tests/*.rs) once with every
# redis-server under valgrind memcheck (testkit's RL_SERVER_VALGRIND), then a report of the
# errors valgrind found, split into those with a frame in our module (librl.so: each one is a
# bug of ours, and the run fails) and the server's own (Redis built with jemalloc and its own
# tricks; counted, shown, never ours). No suppression file: the split is by stack.
#
#   scripts/test-valgrind.sh               the whole module suite
#   scripts/test-valgrind.sh --test check  one test file (any cargo test arguments)
#
# Tests that wait on the clock may fail when the server runs 20-50x slower; the report says
# which, and only memory errors decide the exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || apt-get install -y valgrind
LOGS=$PWD/.cache/valgrind
rm -rf "$LOGS" && mkdir -p "$LOGS"
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--tests)
started=$(date +%s)
# The differential test's 100,000 random operations on three backends had not finished after
# 53 minutes under memcheck on a busy machine (the Lua of FCALL and EVALSHA is what is slow
# there); 10,000 take about 4 minutes and still send each command hundreds of times.
# RL_DIFF_OPS overrides.
export RL_DIFF_OPS=${RL_DIFF_OPS:-10000}
RL_SERVER_VALGRIND=$LOGS cargo test --no-fail-fast -p ml-api-rate-limiter "${ARGS[@]}" -- --test-threads=2 > "$LOGS/cargo-test.log" 2>&1
status=$?
servers=$(ls "$LOGS"/server-*.log 2>/dev/null | wc -l)
ours=0; theirs=0
for log in "$LOGS"/server-*.log; do
    [ -e "$log" ] || continue
    # Each error block starts with "==pid== <kind>" after a blank "==pid== " line.
    while IFS= read -r block; do
        if grep -q "librl.so" <<< "$block"; then ours=$((ours + 1)); echo "$block" >> "$LOGS/ours.txt"
        else theirs=$((theirs + 1)); echo "$block" >> "$LOGS/theirs.txt"; fi
    done < <(awk '/^==[0-9]+== (Invalid|Conditional|Use of uninitialised|Syscall param|Mismatched|Source and destination|Argument)/{if(b)print b; b=$0; next} /^==[0-9]+== *$/{if(b){print b; b=""}; next} {if(b) b=b "\\n" $0} END{if(b)print b}' "$log")
done
echo "valgrind: $servers server processes, test run $(( $(date +%s) - started )) s, cargo test exit $status"
grep -E "^test result|FAILED|^failures:" "$LOGS/cargo-test.log" | sort | uniq -c | head -20
echo "valgrind: $ours error(s) with a frame in librl.so, $theirs in the server's own code"
[ -s "$LOGS/ours.txt" ] && head -60 "$LOGS/ours.txt"
[ "$ours" -eq 0 ]
