//! libFuzzer entry for [`alpn_fuzz::client_answer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| alpn_fuzz::client_answer(data));
