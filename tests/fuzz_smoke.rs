//! The fuzz targets (`fuzz/`, run at length by `make fuzz`) on stable Rust, bounded: every file
//! of their seed corpus (`fuzz/corpus/<target>/`), then generated inputs, deterministic so a
//! failure repeats. A panic here is a crash the fuzzer would find.

use std::path::PathBuf;

use rl::fuzz_targets;

/// Inputs generated per target (the full runs do tens of millions).
const GENERATED: u64 = 200_000;

fn run(target: &str, body: fn(&[u8]), alphabet: &[&[u8]]) {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    testkit::fuzz::run(&corpus, body, alphabet, GENERATED);
}

#[test]
fn command_args() {
    let words: &[&[u8]] = &[
        b"\n",
        b"RL.CHECK",
        b"rl:k",
        b"10",
        b"60",
        b"COST",
        b"BURST",
        b"KEEP",
        b"FORCE",
        b"cost",
        b"0",
        b"-0",
        b"+5",
        b"0x10",
        b"1e3",
        b" 1",
        b"9223372036854775807",
        b"9223372036854775808",
        b"-1",
        b"ID",
        b"\xff\xfe",
        b"2",
    ];
    run("command_args", fuzz_targets::command_args, words);
}

#[test]
fn stored_state() {
    let words: &[&[u8]] = &[b"1764441600123456789", b"+", b"/", b"1", b"3", b"0", b"00", b"18446744073709551615", b"-"];
    run("stored_state", fuzz_targets::stored_state, words);
}

#[test]
fn gcra_decision() {
    let words: &[&[u8]] =
        &[&[0; 8], &[1, 0, 0, 0, 0, 0, 0, 0], &[0xff; 8], &[1], &[2], &[3], &[10, 0, 0, 0, 0, 0, 0, 0]];
    run("gcra_decision", fuzz_targets::gcra_decision, words);
}
