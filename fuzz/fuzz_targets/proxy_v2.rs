//! libFuzzer entry for [`alpn_fuzz::proxy_v2`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::proxy_v2(data));
