//! The client end of a tunnel: the upgrade request and its framing over an
//! established connection, then the inner TLS. `alpn-tunnel` and the tests use it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use alpn_protocol::framing::{encode_client_frame, Framed, Framing, Role};
use alpn_protocol::handshake::{self as upgrade, AnswerError};
use alpn_protocol::names::Names;

/// Sends the upgrade request for `framing` on `stream`, in the tokens of
/// `names`, and returns the stream in the framing the server switched to
/// ([`Framed::framing`]: for `websocket`, with the subprotocol the server
/// chose), pinging after `ping_interval` with nothing sent (except raw `alpn`,
/// which cannot carry a ping).
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    framing: Framing,
    host: &str,
    path: &str,
    names: &Names,
    ping_interval: Duration,
) -> Result<Framed<S>, AnswerError> {
    upgrade_sending(stream, framing, host, path, names, ping_interval, &[]).await
}

/// [`upgrade`], with `early` (the start of the framed stream: the inner
/// ClientHello) sent in the same write as the request, framed as `framing`
/// frames it, without waiting for the answer; nothing more if it is empty.
pub async fn upgrade_sending<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    framing: Framing,
    host: &str,
    path: &str,
    names: &Names,
    ping_interval: Duration,
    early: &[u8],
) -> Result<Framed<S>, AnswerError> {
    let (request, key) = upgrade::client_request(framing, host, path, names);
    let mut out = request.into_bytes();
    if !early.is_empty() {
        encode_client_frame(framing, early, &mut out)?;
    }
    stream.write_all(&out).await?;
    stream.flush().await?;
    let switched = upgrade::read_switch(&mut stream, framing, key.as_deref(), names).await?;
    Ok(Framed::new(
        switched.framing,
        Role::Client,
        stream,
        switched.leftover,
        ping_interval,
    ))
}

/// Runs the inner TLS handshake as `server_name` with `config` (its ALPN list,
/// roots and client certificate).
pub async fn inner_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<TlsStream<S>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(self::server_name(server_name)?, stream)
        .await
}

/// `name` as the inner TLS's server name (SNI), or why it cannot be one.
pub fn server_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?}: {e}")))
}
