//! The inner ClientHello right behind the upgrade request (`--early-hello`,
//! an opt-in): the request and the first flight of the inner TLS leave in one
//! write, so the router has the ClientHello as soon as it has switched, and
//! a fresh tunnel opens one round trip sooner. It works only where every hop
//! passes bytes that arrive before the upgrade is answered; `alpn-tunnel
//! probe` finds out whether the path does.
//!
//! The ClientHello goes out framed as the requested framing frames it
//! ([`alpn_protocol::framing::encode_client_frame`]): a server either switches to that framing
//! (WebSocket's subprotocols differ in who pings, not in how frames look) or
//! refuses, and a refusal is reported as any other.

use crate::closing::{Carrier, InnerTls};
use crate::handshake::server_name;
use crate::{Client, ClientError, Path};
use alpn_protocol::framing::Framing;

/// The step the inner TLS is, in errors: a deadline missed here may mean a hop
/// holds back (or dropped) the bytes sent before the answer.
const STEP: &str =
    "the inner TLS handshake (ClientHello sent before the upgrade answer; `alpn-tunnel probe` says whether the path carries it)";

impl Client {
    /// One tunnel along `Path::Upgrade(framing)` with the inner ClientHello
    /// sent behind the upgrade request; the inner TLS and the path in use.
    pub(crate) async fn early_hello(
        &self,
        framing: Framing,
    ) -> Result<(InnerTls, Path), ClientError> {
        let name = server_name(self.sni()).map_err(|error| ClientError::InnerTls {
            alpn: self.alpn.clone(),
            path: Path::Upgrade(framing),
            error,
        })?;
        // The inner TLS begins with no carrier: its ClientHello is taken out
        // as soon as it is made, and it is not driven until the answer.
        let mut hello = Vec::new();
        let mut connect = tokio_rustls::TlsConnector::from(self.configs.inner.clone())
            .connect_with(name, Carrier::Pending, |conn| {
                while conn.wants_write() {
                    if conn.write_tls(&mut hello).is_err() {
                        break;
                    }
                }
            });
        let framed = self.upgraded_sending(framing, &hello).await?;
        let in_use = Path::Upgrade(framed.framing());
        // No carrier to give only if the inner TLS failed to begin: awaiting
        // it then says why.
        if let Some(carrier) = connect.get_mut() {
            *carrier = Carrier::Upgraded(framed);
        }
        let tls = self.checked_inner(connect, in_use, STEP).await?;
        Ok((tls, in_use))
    }
}
