//! libFuzzer entry for [`alpn_fuzz::alpn_ping_read`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::alpn_ping_read(data));
