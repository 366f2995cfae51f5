//! TCP options on every data connection (client and backend): keepalive
//! probes and `TCP_USER_TIMEOUT`, so that a peer gone without a FIN (a
//! vanished client, a backend host that lost power) gives back its tunnel
//! within the configured deadlines instead of the system's hours; and a limit
//! on the bytes queued in the kernel but not yet sent (`TCP_NOTSENT_LOWAT`).
//!
//! Without that limit the kernel queues megabytes for a slow reader and lets
//! the router write again only once a third of them has drained: seconds
//! without progress for a reader that is taking bytes steadily, which the
//! send timeout would take for a stalled side and cut. With it, the router
//! writes again as soon as the reader has taken a little, so its progress
//! follows the reader's, and a side that takes nothing is still one.

use socket2::SockRef;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::Limits;

/// The most bytes a data connection queues in the kernel unsent: two of the
/// copy's buffers, so a fast path never waits on it.
pub(crate) const NOTSENT_LOWAT: u32 = 2 * crate::copy::BUFFER as u32;

/// Sets `limits`' keepalive and user timeout, and [`NOTSENT_LOWAT`], on
/// `stream`; a failure is logged and the connection goes on without them.
pub(crate) fn set_tcp_options(stream: &TcpStream, limits: &Limits) {
    let socket = SockRef::from(stream);
    let k = &limits.tcp_keepalive;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(k.time)
        .with_interval(k.interval)
        .with_retries(k.probes);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        debug!("could not set TCP keepalive: {e}");
    }
    let user_timeout = Some(limits.tcp_user_timeout).filter(|t| !t.is_zero());
    if let Err(e) = socket.set_tcp_user_timeout(user_timeout) {
        debug!("could not set TCP_USER_TIMEOUT: {e}");
    }
    if let Err(e) = socket.set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        debug!("could not set TCP_NOTSENT_LOWAT: {e}");
    }
}
