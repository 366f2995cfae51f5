//! libFuzzer entry for [`alpn_fuzz::router_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::router_request(data));
