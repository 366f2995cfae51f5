//! Test harness for the end-to-end tests: a real Envoy started from the shipped
//! bootstraps (with the test's ports and paths written in), stub upstreams on
//! `127.0.0.1:0`, and a small raw HTTP/1.1 client that shows exactly what a
//! client on the wire would see.

pub mod databases;
pub mod envoy;
pub mod forward_proxy;
pub mod http;
pub mod istio;
pub mod load_balancer;
pub mod process;
pub mod registry;
pub mod stubs;
pub mod tls;

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file that the build must have produced, with the command that produces it.
pub fn built(relative: &str, how: &str) -> PathBuf {
    let path = root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `{how}` first (make test does)",
        path.display()
    );
    path
}

/// The Envoy binary installed by `make` into the project's virtualenv.
pub fn envoy_bin() -> PathBuf {
    built(".venv/bin/envoy", "make envoy")
}

/// The `alpn-tunnel` binary (the client crate's), built by `make build`.
pub fn tunnel_bin() -> PathBuf {
    built("target/debug/alpn-tunnel", "cargo build -p alpn-tunnel")
}

/// The proxy variables `alpn-tunnel` follows (curl's).
pub const PROXY_VARIABLES: [&str; 10] = [
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "ALPN_TUNNEL_PROXY",
    "ALPN_TUNNEL_PROXY_AUTH",
];

/// `alpn-tunnel` as a test runs it: reaching the test's servers on loopback as
/// they are, whatever proxy the machine running the tests uses (for its
/// package registries, say); with its persistent cache off
/// (`ALPN_TUNNEL_CACHE_TTL=0`) and `XDG_CACHE_HOME` pointed away from the
/// user's home, so that no test reads or writes the real cache. Tests of
/// proxies and of the cache set their own.
pub fn tunnel_command() -> std::process::Command {
    let mut c = std::process::Command::new(tunnel_bin());
    for name in PROXY_VARIABLES {
        c.env_remove(name);
    }
    c.env("ALPN_TUNNEL_CACHE_TTL", "0").env(
        "XDG_CACHE_HOME",
        std::env::temp_dir().join("alpn-tunnel-tests-without-cache"),
    );
    c
}

/// The filter as Envoy loads it.
pub fn filter_wasm() -> PathBuf {
    built(
        "target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm",
        "make build",
    )
}

/// Deterministic pseudo-random bytes (xorshift), so that no framing bug can
/// reproduce a payload by accident and a failure can be replayed.
pub fn payload(len: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}
