#!/usr/bin/env bash
# `make fuzz`: every fuzz target under cargo fuzz (nightly, libFuzzer), FUZZ_RUNS iterations
# each (default 10 million), on the seed corpus in fuzz/corpus/<target> (read only) with the
# inputs it finds kept in .cache/fuzz/<target>. Prints, per target: runs, time, corpus size;
# stops at the first crash (its input is in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh                 every target
#   scripts/fuzz.sh gcra_decision   one
#   FUZZ_RUNS=100000 scripts/fuzz.sh
#   FUZZ_SECONDS=600 scripts/fuzz.sh config_file    also stop after this long (0: no limit)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${FUZZ_RUNS:-10000000}
SECONDS_CAP=${FUZZ_SECONDS:-0}
TARGETS=${*:-command_args stored_state gcra_decision config_file identity llm_answer rls_descriptors}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
for target in $TARGETS; do
    mkdir -p ".cache/fuzz/$target"
    started=$(date +%s)
    (cd fuzz && cargo +nightly fuzz run "$target" "../.cache/fuzz/$target" "corpus/$target" -- \
        -runs="$RUNS" -max_total_time="$SECONDS_CAP" -max_len=4096 -print_final_stats=1 2> "../.cache/fuzz/$target.log") || {
        tail -40 ".cache/fuzz/$target.log"
        echo "fuzz: $target crashed; input in fuzz/artifacts/$target/" >&2
        exit 1
    }
    done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' ".cache/fuzz/$target.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $target: $done_runs runs in $(( $(date +%s) - started )) s, corpus $(ls ".cache/fuzz/$target" | wc -l) inputs (seeds $(ls "fuzz/corpus/$target" | wc -l)), no crash"
done
