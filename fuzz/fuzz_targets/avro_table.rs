//! cargo fuzz target: tidewater_runtime::fuzz::avro_table.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewater_runtime::fuzz::avro_table(data));
