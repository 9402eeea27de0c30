//! cargo fuzz target: tidewater_runtime::fuzz::change_decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewater_runtime::fuzz::change_decoder(data));
