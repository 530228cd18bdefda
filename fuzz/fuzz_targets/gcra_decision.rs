#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rl::fuzz_targets::gcra_decision(data));
