//! libFuzzer entry for [`alpn_fuzz::router_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::router_config(data));
