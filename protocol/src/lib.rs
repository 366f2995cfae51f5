//! The wire contract of ALPN tunnels through HTTP load balancers (PROTOCOL.md;
//! `docs/protocol.md` for users), sans-IO: no sockets, no runtime, so the Envoy
//! filter (wasm32), the router and the client share one definition of it.
//!
//! - [`names`]: the configurable names with the protocol's defaults, and the
//!   upgrade types and subprotocols they name; [`names_config`]: the names as
//!   configurations write them, checked.
//! - [`request`]: a read-only view of an upgrade request's facts.
//! - [`validate`]: an upgrade request into an approval or a refusal (status,
//!   reason), as sections 2 and 3 say.
//! - [`client_addr`]: the client address of section 7 and the CIDR rules.
//! - [`websocket`]: the accept key, frame headers, masking and Close codes.
//! - [`framing`]: which framing a tunnel uses; with the `tokio` feature, the
//!   framings as streams (shared by the router and the client), and how a
//!   tunnel's outer connection ends.
//! - `handshake` (feature `tokio`): the client's upgrade request and the check
//!   of the answer.

pub mod client_addr;
pub mod framing;
#[cfg(feature = "tokio")]
pub mod handshake;
pub mod names;
pub mod names_config;
pub mod request;
pub mod validate;
pub mod websocket;
