//! `alpn-upgrade-filter`: the proxy-wasm HTTP filter that Envoy runs behind the
//! load balancer. It approves well-formed ALPN tunnel upgrades on the upgrade
//! path, refuses everything else there with the status and reason of PROTOCOL.md,
//! and lets all other traffic pass untouched.
//!
//! The logic ([`decision`], [`client_addr`], [`rate_limit`], [`config`]) is plain
//! Rust with no host calls; the proxy-wasm glue in `host` exists only in the
//! `wasm32-wasip1` build that Envoy loads.

pub mod client_addr;
pub mod config;
pub mod decision;
pub mod rate_limit;
pub mod request;

#[cfg(target_os = "wasi")]
mod host;
