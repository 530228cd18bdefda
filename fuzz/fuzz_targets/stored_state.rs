#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rl::fuzz_targets::stored_state(data));
