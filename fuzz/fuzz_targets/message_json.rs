#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrobeam_fuzz_targets::message_json(data));
