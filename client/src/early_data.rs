//! TLS 1.3 early data (0-RTT) on pre-opened tunnels: where the route takes it
//! (`early_data = true` in the router's route, PROTOCOL.md section 5) and a
//! session from an earlier tunnel allows it, the local application's first
//! bytes go with the inner ClientHello, and the router answers them behind
//! its handshake flight: one round trip through the load balancer instead of
//! two. Where the router refuses them (a session it no longer holds: another
//! replica, a reload), tokio-rustls sends them again after the handshake.

use std::time::Duration;

use tokio::net::TcpStream;

/// The most early data sent: the router's limit (`MAX_EARLY_DATA` there).
pub const MAX_FIRST_BYTES: usize = 16 * 1024;

/// How long a pre-opened tunnel waits for the local application's first
/// bytes before it starts the inner TLS without them. Clients that speak
/// first (PostgreSQL, Redis, SSH, HTTP) have written by then; a protocol
/// whose server speaks first pays this once per connection, and only on
/// routes that take early data.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_millis(2);

/// What the local application has sent within [`FIRST_BYTES_WAIT`], up to
/// [`MAX_FIRST_BYTES`]; empty when it sent nothing (or closed, or failed:
/// the tunnel's copy finds that out again).
pub async fn first_bytes(local: &TcpStream) -> Vec<u8> {
    let _ = tokio::time::timeout(FIRST_BYTES_WAIT, local.readable()).await;
    let mut first = vec![0; MAX_FIRST_BYTES];
    let n = local.try_read(&mut first).unwrap_or(0);
    first.truncate(n);
    first
}
