//! WebSocket framing (RFC 6455): placeholder being written.
use std::time::Duration;

use super::Role;

/// A stream framed as WebSocket binary messages.
pub struct WebSocketStream<S> {
    inner: S,
}

impl<S> WebSocketStream<S> {
    /// Frames `inner`.
    pub fn new(inner: S, _role: Role, _ping_interval: Option<Duration>) -> WebSocketStream<S> {
        WebSocketStream { inner }
    }
}
