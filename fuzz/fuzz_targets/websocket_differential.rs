//! libFuzzer entry for [`alpn_fuzz::websocket_differential`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::websocket_differential(data));
