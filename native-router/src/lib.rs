//! The native router: it answers the upgrades Envoy approves, runs the inner TLS
//! handshake and dispatches the stream to the backend chosen by ALPN
//! (PROTOCOL.md sections 2 to 5 and 7).
//!
//! - [`config`]: the TOML file, validated at load. The client end is the
//!   `alpn-tunnel` crate.
//! - [`upgrade`]: the server's side of the HTTP upgrade handshake (the
//!   protocol, its framings and the client's side are in `alpn-protocol`).
//! - [`tls`]: the inner TLS, the route chosen from the ClientHello ([`route`]).
//! - [`tunnel`]: dialing the backend (with [`proxy_protocol`]) and the pipe,
//!   whose two directions [`copy`] carries.
//! - [`server`]: listeners, reload and drain; [`admission`]: the connection
//!   caps; [`descriptors`]: the file descriptor budget; [`cutoffs`]: refused
//!   connections logged without letting a client choose the volume; [`metrics`].

pub mod admission;
pub mod config;
pub mod copy;
pub mod cutoffs;
pub mod descriptors;
pub mod metrics;
pub mod proxy_protocol;
pub mod route;
pub mod server;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
