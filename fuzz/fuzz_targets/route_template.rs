//! cargo fuzz target: tidewater_runtime::fuzz::route_template.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewater_runtime::fuzz::route_template(data));
