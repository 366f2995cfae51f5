//! The native router: it answers the upgrades Envoy approves, runs the inner TLS
//! handshake and dispatches the stream to the backend chosen by ALPN.
//!
//! Being built in its issue: so far the configuration ([`config`]) and the route
//! choice ([`route`]); the listeners, framings and the pipe follow.

pub mod config;
pub mod framing;
pub mod route;
