//! libFuzzer entry for [`alpn_fuzz::filter_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::filter_request(data));
