//! The native router: it answers the upgrades Envoy approves, runs the inner TLS
//! handshake and dispatches the stream to the backend chosen by ALPN.
//!
//! Skeleton only: the router is built in its own issue. The crate exists now so
//! that the workspace, the lints and CI cover it from the start.
