//! The upgrade handshake of PROTOCOL.md sections 2 and 3, both ends.
//!
//! Server: read the request head under a size cap, validate it with the same
//! decision function the Envoy filter uses (so the router is safe when reached
//! without the filter), and answer 101 or the refusal of section 3.
//! Client: build the request and check the 101.

use std::io;
use std::net::IpAddr;

use alpn_protocol::client_addr::parse_addr;
use alpn_protocol::framing::Framing;
use alpn_protocol::names::Names;
use alpn_protocol::request::Request;
use alpn_protocol::validate::{validate, Refusal, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head the router reads.
pub use alpn_protocol::handshake::MAX_HEAD;
/// The most header lines in a request head.
use alpn_protocol::handshake::MAX_HEADERS;

pub use alpn_protocol::websocket::accept_key;

/// A valid upgrade request not answered yet: the caller may still refuse it
/// (a policy of its own, such as a per-client limit) or [`Self::switch`].
#[derive(Debug)]
pub struct Pending {
    accepted: Accepted,
    /// The tokens the answer names the type and subprotocol with.
    upgrade_token: String,
    subprotocol_token: Option<String>,
    /// The `Sec-WebSocket-Accept` value, for WebSocket.
    websocket_accept: Option<String>,
}

impl Pending {
    /// What the request asked for.
    pub fn accepted(&self) -> &Accepted {
        &self.accepted
    }

    /// Answers `101 Switching Protocols`.
    pub async fn switch<S: AsyncWrite + Unpin>(
        self,
        stream: &mut S,
    ) -> Result<Accepted, UpgradeError> {
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n",
            self.upgrade_token
        );
        if let (Some(sub), Some(accept)) = (&self.subprotocol_token, &self.websocket_accept) {
            answer.push_str(&format!(
                "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {sub}\r\n"
            ));
        }
        answer.push_str("\r\n");
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        Ok(self.accepted)
    }
}

/// An accepted upgrade: how to frame the stream, and what came with it.
#[derive(Debug)]
pub struct Accepted {
    /// The framing chosen.
    pub framing: Framing,
    /// The `X-Alpn-Client-Addr` value, if the request had a parseable one.
    pub client_addr: Option<IpAddr>,
    /// Bytes after the head: the start of the framed stream.
    pub leftover: Vec<u8>,
}

/// Why an upgrade request was not accepted. Every variant has been answered
/// (or, for I/O errors, could not be) by the time it is returned.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The request was refused with this status and reason.
    #[error("refused {status}: {reason}")]
    Refused {
        /// The status sent.
        status: u16,
        /// The one-line reason sent as the body.
        reason: String,
    },
    /// The connection closed before a whole request head arrived.
    #[error("closed before a complete request head ({0} bytes read)")]
    Closed(usize),
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Reads and answers one upgrade request under `names`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    names: &Names,
) -> Result<Accepted, UpgradeError> {
    read_request(stream, names).await?.switch(stream).await
}

/// Reads one upgrade request and validates it under `names` (the protocol's
/// validation, the same the Envoy filter runs); an invalid one is answered with
/// its refusal, a valid one is left for the caller to answer.
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    names: &Names,
) -> Result<Pending, UpgradeError> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => break n,
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return refuse(
                    stream,
                    431,
                    "too many header lines in the upgrade request",
                    &[],
                )
                .await;
            }
            Err(e) => {
                return refuse(stream, 400, &format!("malformed HTTP request: {e}"), &[]).await
            }
        }
        if buf.len() >= MAX_HEAD {
            return refuse(
                stream,
                431,
                &format!("the upgrade request head is larger than {MAX_HEAD} bytes"),
                &[],
            )
            .await;
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(MAX_HEAD + 1 - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(UpgradeError::Closed(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let header_list: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    // HTTP/1.1 only, with its mandatory Host (RFC 9112 section 3.2): the
    // router must be safe when reached without Envoy in front.
    if req.version != Some(1) {
        return refuse(
            stream,
            400,
            "connection upgrades need HTTP/1.1 (this request is HTTP/1.0)",
            &[],
        )
        .await;
    }
    // Exactly one: two Host lines name two targets, and a proxy in front may
    // have routed by the other one (RFC 9112 section 3.2: answer 400).
    match header_list
        .iter()
        .filter(|(name, _)| name == "host")
        .count()
    {
        0 => return refuse(stream, 400, "an HTTP/1.1 request needs a Host header", &[]).await,
        1 => {}
        _ => return refuse(stream, 400, "more than one Host header", &[]).await,
    }
    let request = Request {
        method: req.method.unwrap_or(""),
        path: req.path.unwrap_or(""),
        headers: &header_list,
    };
    let approval = match validate(&request, names) {
        Verdict::Approve(a) => a,
        Verdict::Refuse(r) => return refuse_with(stream, &r).await,
        Verdict::Pass => {
            return refuse(
                stream,
                404,
                &format!(
                    "not found: this listener serves upgrades on {} only",
                    names.upgrade_paths.join(" or ")
                ),
                &[],
            )
            .await
        }
    };
    let framing = approval.framing();
    let websocket_accept = matches!(framing, Framing::WebSocket(_))
        .then(|| accept_key(request.single("sec-websocket-key").unwrap_or_default()));
    let client_addr = request
        .single(&names.client_addr_header)
        .and_then(parse_addr);
    Ok(Pending {
        upgrade_token: names.type_token(approval.upgrade_type).to_string(),
        subprotocol_token: approval
            .subprotocol
            .map(|s| names.subprotocol_token(s).to_string()),
        accepted: Accepted {
            framing,
            client_addr,
            leftover: buf[head_len..].to_vec(),
        },
        websocket_accept,
    })
}

async fn refuse_with<S: AsyncWrite + Unpin, T>(
    stream: &mut S,
    r: &Refusal,
) -> Result<T, UpgradeError> {
    let extra: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    refuse(stream, r.kind.status() as u16, &r.reason, &extra).await
}

/// Answers with `status` and a one-line `text/plain` reason, then shuts down
/// the write side.
pub async fn refuse<S: AsyncWrite + Unpin, T>(
    stream: &mut S,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
) -> Result<T, UpgradeError> {
    let body = format!("{reason}\n");
    let mut answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in headers {
        answer.push_str(&format!("{name}: {value}\r\n"));
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    // The refusal is what matters; a client that already left cannot read it.
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    Err(UpgradeError::Refused {
        status,
        reason: reason.to_string(),
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alpn_protocol::framing::Subprotocol;
    use alpn_protocol::handshake::{client_request, read_answer, read_switch, AnswerError};

    async fn exchange(request: &[u8]) -> (Result<Accepted, UpgradeError>, String) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(request).await.unwrap();
        let result = accept(&mut server, &Names::default()).await;
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        (result, answer)
    }

    #[tokio::test]
    async fn each_framing_is_accepted_and_the_client_agrees() {
        for (asked, in_use) in [
            (Framing::Alpn, Framing::Alpn),
            (Framing::AlpnPing, Framing::AlpnPing),
            // `websocket` offers alpn-ping first, and the router takes it.
            (
                Framing::WebSocket(Subprotocol::Alpn),
                Framing::WebSocket(Subprotocol::AlpnPing),
            ),
            (
                Framing::WebSocket(Subprotocol::AlpnPing),
                Framing::WebSocket(Subprotocol::AlpnPing),
            ),
        ] {
            let (req, key) = client_request(
                asked,
                "router.test",
                "/connectionupgrade",
                &Names::default(),
            );
            let mut bytes = req.into_bytes();
            bytes.extend_from_slice(b"\x16\x03\x01early");
            let (result, answer) = exchange(&bytes).await;
            let accepted = result.unwrap();
            assert_eq!(accepted.framing, in_use);
            assert_eq!(
                accepted.leftover, b"\x16\x03\x01early",
                "bytes after the head belong to the tunnel"
            );
            let mut reader = answer.as_bytes();
            let switched = read_switch(&mut reader, asked, key.as_deref(), &Names::default())
                .await
                .unwrap();
            assert_eq!(switched.framing, in_use, "the client names what is in use");
            assert!(switched.leftover.is_empty());
        }
    }

    #[tokio::test]
    async fn refusals_carry_status_and_reason() {
        for (request, status, text) in [
            ("POST /connectionupgrade HTTP/1.1\r\nHost: r\r\n\r\n", 405, "method POST"),
            ("GET /connectionupgrade HTTP/1.1\r\nHost: r\r\n\r\n", 426, "only accepts connection upgrades"),
            ("GET /elsewhere HTTP/1.1\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: alpn\r\n\r\n", 404, "not an upgrade path"),
            ("GET /connectionupgrade HTTP/1.1\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: alpn\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "must not have a body"),
            ("GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
            ("GET /connectionupgrade HTTP/1.0\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: alpn\r\n\r\n", 400, "need HTTP/1.1"),
            ("GET /connectionupgrade HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: alpn\r\n\r\n", 400, "needs a Host header"),
            ("GET /connectionupgrade HTTP/1.1\r\nHost: r\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: alpn\r\n\r\n", 400, "more than one Host header"),
        ] {
            let (result, answer) = exchange(request.as_bytes()).await;
            assert!(matches!(result, Err(UpgradeError::Refused { status: s, .. }) if s == status), "{request:?}: {result:?}");
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")) && answer.contains(text), "{answer}");
            let mut reader = answer.as_bytes();
            match read_answer(&mut reader, Framing::Alpn, None, &Names::default()).await {
                Err(AnswerError::Status { status: s, reason, .. }) => assert!(s == status && reason.contains(text), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_head_gets_431() {
        let mut request = b"GET /connectionupgrade HTTP/1.1\r\n".to_vec();
        while request.len() <= MAX_HEAD {
            request.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(&request).await.unwrap();
        let result = accept(&mut server, &Names::default()).await;
        assert!(
            matches!(result, Err(UpgradeError::Refused { status: 431, .. })),
            "{result:?}"
        );
    }
}
