#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rl::fuzz_targets::command_args(data));
