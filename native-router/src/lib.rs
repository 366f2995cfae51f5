//! The native router: it answers the upgrades Envoy approves, runs the inner TLS
//! handshake and dispatches the stream to the backend chosen by ALPN
//! (PROTOCOL.md sections 2 to 5 and 7).
//!
//! The public API:
//!
//! - [`Config`]: the TOML file, validated at load ([`Config::load`]); a bad
//!   file is a [`ConfigError`] naming the key that is wrong.
//! - [`Router`] serves a configuration (and [`Router::reload`]s a new one);
//!   [`run`] serves it on bound [`Listeners`] until a shutdown future the
//!   caller chooses resolves, then drains. Tests bind the listeners on port 0
//!   and hold the shutdown.
//! - [`serve`] and [`check`]: what `alpn-router serve` and `alpn-router
//!   check` do with a configuration file (signals, the descriptor limit, the
//!   report).
//! - [`drain`]: what `alpn-router drain` does (a Pod's preStop hook): fail
//!   Envoy's health check, drain its listeners, wait for the router's
//!   tunnels to end or a deadline.
//! - [`accept_upgrade`]: the server's side of the upgrade handshake, for
//!   servers that answer upgrades as the router does.
//!
//! Inside: `config` (the file), `upgrade` (the server's side of
//! the HTTP upgrade handshake; the protocol, its framings and the client's
//! side are in `alpn-protocol`, the client end is the `alpn-tunnel` crate),
//! `tls` (the inner TLS, the route chosen from the ClientHello by `route`),
//! `tunnel` (dialing the backend, with `proxy_protocol`, and the pipe, whose
//! two directions `copy` carries), `server` (listeners, reload and drain),
//! `commands` (the file, signals and descriptor limit around them),
//! `drain` (the preStop sequence, a client of Envoy's admin and the metrics),
//! `admission` (the connection caps), `descriptors` (the file descriptor
//! budget), `cutoffs` (refused connections logged without letting a client
//! choose the volume) and `metrics`.

mod admission;
mod commands;
mod config;
mod copy;
mod cutoffs;
mod descriptors;
mod drain;
mod early_data;
mod metrics;
mod preopen;
mod proxy_protocol;
mod route;
mod server;
mod sockets;
mod tls;
mod tunnel;
mod upgrade;

pub use commands::{check, serve, Error};
pub use config::{
    BackendTls, CertKey, Config, ConfigError, Limits, MetricsListener, Route, TcpKeepalive,
    UpgradeListener,
};
pub use drain::{drain, CallError, DrainOptions, DrainOutcome};
pub use server::{run, Listeners, Router};
pub use upgrade::{accept as accept_upgrade, Accepted, UpgradeError};

/// The PROXY v2 encoder, public for the fuzz targets (`fuzz/`) only: not part of
/// the API.
#[doc(hidden)]
pub use proxy_protocol::header as proxy_v2_header;
