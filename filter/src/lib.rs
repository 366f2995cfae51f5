//! `alpn-upgrade-filter`: the proxy-wasm HTTP filter that Envoy runs behind the
//! load balancer. It approves well-formed ALPN tunnel upgrades on the upgrade
//! path, refuses everything else there with the status and reason of PROTOCOL.md,
//! and lets all other traffic pass untouched.
//!
//! The wire contract (validation, names, the client address) comes from the
//! `alpn-protocol` crate; this crate adds the filter's policy ([`decision`]:
//! the source allow-list and the [`rate_limit`]), its JSON [`config`], and the
//! proxy-wasm glue in `host`, which exists only in the `wasm32-wasip1` build
//! that Envoy loads.

pub mod config;
pub mod decision;
pub mod rate_limit;

#[cfg(target_os = "wasi")]
mod host;
