//! libFuzzer entry for [`alpn_fuzz::server_url`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::server_url(data));
