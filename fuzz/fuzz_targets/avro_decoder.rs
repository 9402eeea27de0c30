//! cargo fuzz target: tidewater_runtime::fuzz::avro_decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewater_runtime::fuzz::avro_decoder(data));
