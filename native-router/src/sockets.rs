//! TCP options on every data connection (client and backend): keepalive
//! probes and `TCP_USER_TIMEOUT`, so that a peer gone without a FIN (a
//! vanished client, a backend host that lost power) gives back its tunnel
//! within the configured deadlines instead of the system's hours.

use socket2::SockRef;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::Limits;

/// Sets `limits`' keepalive and user timeout on `stream`; a failure is
/// logged and the connection goes on without them.
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
}
