//! libFuzzer entry for [`alpn_fuzz::client_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::client_config(data));
