//! The gateway's fuzz targets (`fuzz/`, run at length by `make fuzz`) on stable Rust, bounded:
//! every file of their seed corpus (`fuzz/corpus/<target>/`), then generated inputs,
//! deterministic so a failure repeats. A panic here is a crash the fuzzer would find.

use std::path::PathBuf;

use gateway::fuzz_targets;

/// Inputs generated per target (the full runs do millions).
const GENERATED: u64 = 20_000;

fn run(target: &str, body: fn(&[u8]), alphabet: &[&[u8]]) {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    testkit::fuzz::run(&corpus, body, alphabet, GENERATED);
}

#[test]
fn config_file() {
    let words: &[&[u8]] = &[
        b"\n",
        b"[[policy]]\n",
        b"name = \"p\"\n",
        b"limit = 10\n",
        b"window = 60\n",
        b"burst = 0\n",
        b"paths = [\"/\"]\n",
        b"[redis]\n",
        b"url = \"redis://x\"\n",
        b"[llm]\n",
        b"max_event_bytes = 18446744073709551615\n",
        b"=",
        b"\"",
        b"[[policy.limits]]\n",
        b"unit = \"tokens\"\n",
        b"-1",
    ];
    run("config_file", fuzz_targets::config_file, words);
}

#[test]
fn identity() {
    let words: &[&[u8]] = &[
        b"\n",
        b"x-api-key: k",
        b"authorization: Bearer t",
        b"authorization: Basic x",
        b"x-forwarded-for: ",
        b"1.2.3.4",
        b", ",
        b"::1",
        b"10.0.0.2",
        b"connection: x-api-key",
        b"\xff",
        b"x-api-key:",
        b"[::1]:80",
    ];
    run("identity", fuzz_targets::identity, words);
}

#[test]
fn llm_answer() {
    let words: &[&[u8]] = &[
        b"data: ",
        b"{\"usage\":{\"total_tokens\":12}",
        b",\"choices\":[]}",
        b"\n\n",
        b"\r\n",
        b"\r",
        b"[DONE]",
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]",
        b",\"max_tokens\":",
        b"1e3",
        b"99999999999999999999",
        b",\"n\":",
        b",\"stream\":true",
        b"}",
        b"[[[[[[",
    ];
    run("llm_answer", fuzz_targets::llm_answer, words);
}

#[test]
fn rls_descriptors() {
    let words: &[&[u8]] = &[
        b"\n",
        b"k=v",
        b",sub=abc",
        b",sub=",
        b"top=1",
        b"s=x",
        b"u=y",
        b"b=z",
        b"#5",
        b"#0",
        b"-",
        b"#",
        b",",
        b"ml_api_rate_limiter=force",
        b"=",
        b"domain: d\n",
        b"descriptors:\n  - key: x\n",
    ];
    run("rls_descriptors", fuzz_targets::rls_descriptors, words);
}
