//! The client's side of the upgrade handshake (PROTOCOL.md sections 2 and 3):
//! the request for a framing, and the check of the answer (a 101 that matches
//! it, or a refusal whose status and reason are kept).

use std::io;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::framing::{Framing, Subprotocol};
use crate::names::Names;
use crate::websocket::accept_key;

/// The largest answer (or request) head read.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines in a head.
pub const MAX_HEADERS: usize = 64;

/// The WebSocket subprotocols a client asks for `framing`, in order of
/// preference: `websocket` offers `alpn-ping` before `alpn` (a pinged tunnel
/// survives idle timeouts; the server picks the first it allows),
/// `websocket-ping` offers only `alpn-ping`. Empty for the other framings.
pub fn offered_subprotocols(framing: Framing) -> &'static [Subprotocol] {
    match framing {
        Framing::WebSocket(Subprotocol::Alpn) => &[Subprotocol::AlpnPing, Subprotocol::Alpn],
        Framing::WebSocket(Subprotocol::AlpnPing) => &[Subprotocol::AlpnPing],
        Framing::Alpn | Framing::AlpnPing => &[],
    }
}

/// The client's side: the request for `framing` to `host` on `path`, with the
/// tokens and duplicate header of `names`, and the WebSocket key it carries (to
/// check the answer with). A WebSocket request offers [`offered_subprotocols`].
pub fn client_request(
    framing: Framing,
    host: &str,
    path: &str,
    names: &Names,
) -> (String, Option<String>) {
    let token = names.type_token(framing.upgrade_type());
    let duplicate = &names.duplicate_upgrade_header;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {token}\r\n{duplicate}: {token}\r\n"
    );
    let mut key = None;
    if let Framing::WebSocket(_) = framing {
        let mut raw = [0u8; 16];
        // A predictable key only weakens a cache-poisoning defence meant for
        // browsers; still, use the system's randomness when it is there.
        let _ = getrandom::fill(&mut raw);
        let k = base64::engine::general_purpose::STANDARD.encode(raw);
        let offered: Vec<&str> = offered_subprotocols(framing)
            .iter()
            .map(|s| names.subprotocol_token(*s))
            .collect();
        req.push_str(&format!(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {k}\r\nSec-WebSocket-Protocol: {}\r\n",
            offered.join(", ")
        ));
        key = Some(k);
    }
    req.push_str("\r\n");
    (req, key)
}

/// What the server answered instead of switching protocols.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// A status other than 101, with the body's first line.
    #[error("the server answered {status}: {reason}")]
    Status {
        /// The status.
        status: u16,
        /// The reason from the body (PROTOCOL.md's text/plain line), or the reason phrase.
        reason: String,
        /// The answer's `Upgrade` header: a 426 lists the types the server allows.
        upgrade: Option<String>,
    },
    /// A 101 that does not match the request.
    #[error("the server switched protocols wrongly: {0}")]
    BadSwitch(String),
    /// The answer was not HTTP or too large.
    #[error("not an HTTP answer: {0}")]
    Malformed(String),
    /// Reading failed or the connection closed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// How long a refusal's body may take to arrive after its head: a server whose
/// `Content-Length` promises more than it sends must not hide its status.
pub const REFUSAL_BODY_WAIT: Duration = Duration::from_secs(1);

/// A 101 that matches the request.
#[derive(Debug)]
pub struct Switched {
    /// The framing in use: for WebSocket, with the subprotocol the server chose.
    pub framing: Framing,
    /// Bytes after the head: the start of the framed stream.
    pub leftover: Vec<u8>,
}

/// Reads the answer to `client_request`; on a 101, returns the bytes after the head.
pub async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    framing: Framing,
    key: Option<&str>,
    names: &Names,
) -> Result<Vec<u8>, AnswerError> {
    read_switch(stream, framing, key, names)
        .await
        .map(|s| s.leftover)
}

/// Reads the answer to `client_request`; on a 101, returns the framing in use
/// (a WebSocket server may choose any subprotocol offered) and the bytes after
/// the head. A refusal's body is awaited for at most [`REFUSAL_BODY_WAIT`].
pub async fn read_switch<S: AsyncRead + Unpin>(
    stream: &mut S,
    framing: Framing,
    key: Option<&str>,
    names: &Names,
) -> Result<Switched, AnswerError> {
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp
            .parse(&buf)
            .map_err(|e| AnswerError::Malformed(e.to_string()))?
        {
            httparse::Status::Complete(n) => {
                let status = resp.code.unwrap_or(0);
                let find = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                if status != 101 {
                    let len: usize = find("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                        .min(4096);
                    let mut body = buf[n..].to_vec();
                    // What arrives of the body in time; the status stands either way.
                    let _ = tokio::time::timeout(REFUSAL_BODY_WAIT, async {
                        while body.len() < len {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => body.extend_from_slice(&chunk[..k]),
                            }
                        }
                    })
                    .await;
                    let text = String::from_utf8_lossy(&body[..body.len().min(len)])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let reason = if text.is_empty() {
                        resp.reason.unwrap_or("").to_string()
                    } else {
                        text
                    };
                    return Err(AnswerError::Status {
                        status,
                        reason,
                        upgrade: find("upgrade"),
                    });
                }
                let upgrade = find("upgrade").unwrap_or_default();
                let asked = names.type_token(framing.upgrade_type());
                if !upgrade.eq_ignore_ascii_case(asked) {
                    return Err(AnswerError::BadSwitch(format!(
                        "asked for {asked}, got Upgrade: {upgrade:?}"
                    )));
                }
                let mut in_use = framing;
                if let Framing::WebSocket(_) = framing {
                    if let Some(key) = key {
                        if find("sec-websocket-accept").as_deref() != Some(accept_key(key).as_str())
                        {
                            return Err(AnswerError::BadSwitch(
                                "wrong Sec-WebSocket-Accept".into(),
                            ));
                        }
                    }
                    let offered = offered_subprotocols(framing);
                    let chosen = find("sec-websocket-protocol").unwrap_or_default();
                    let Some(sub) = offered
                        .iter()
                        .find(|s| names.subprotocol_token(**s).eq_ignore_ascii_case(&chosen))
                    else {
                        let tokens: Vec<&str> = offered
                            .iter()
                            .map(|s| names.subprotocol_token(*s))
                            .collect();
                        return Err(AnswerError::BadSwitch(format!(
                            "subprotocol {chosen:?}, not one offered ({})",
                            tokens.join(", ")
                        )));
                    };
                    in_use = Framing::WebSocket(*sub);
                }
                return Ok(Switched {
                    framing: in_use,
                    leftover: buf[n..].to_vec(),
                });
            }
            httparse::Status::Partial if buf.len() >= MAX_HEAD => {
                return Err(AnswerError::Malformed(format!(
                    "answer head larger than {MAX_HEAD} bytes"
                )));
            }
            httparse::Status::Partial => {}
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(AnswerError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before answering the upgrade",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::UpgradeType;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn websocket_offers_alpn_ping_first() {
        for (framing, offered) in [
            (
                Framing::WebSocket(Subprotocol::Alpn),
                "Sec-WebSocket-Protocol: alpn-ping, alpn\r\n",
            ),
            (
                Framing::WebSocket(Subprotocol::AlpnPing),
                "Sec-WebSocket-Protocol: alpn-ping\r\n",
            ),
        ] {
            let (req, _) = client_request(framing, "h", "/connectionupgrade", &Names::default());
            assert!(req.contains(offered), "{req}");
        }
    }

    /// A 101 for `key` choosing `subprotocol`.
    fn websocket_switch(key: &str, subprotocol: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n",
            accept_key(key)
        )
    }

    #[tokio::test]
    async fn the_client_accepts_any_subprotocol_it_offered_and_no_other() {
        let ws = Framing::WebSocket(Subprotocol::Alpn);
        let ws_ping = Framing::WebSocket(Subprotocol::AlpnPing);
        for (asked, chosen, in_use) in [
            (ws, "alpn", Some(ws)),
            (ws, "ALPN-PING", Some(ws_ping)),
            (ws_ping, "alpn-ping", Some(ws_ping)),
            (ws_ping, "alpn", None),
            (ws, "chat", None),
        ] {
            let (_, key) = client_request(asked, "h", "/connectionupgrade", &Names::default());
            let key = key.unwrap();
            let answer = websocket_switch(&key, chosen);
            let mut reader = answer.as_bytes();
            let got = read_switch(&mut reader, asked, Some(&key), &Names::default()).await;
            match (got, in_use) {
                (Ok(s), Some(f)) => assert_eq!(s.framing, f, "{chosen}"),
                (Err(AnswerError::BadSwitch(why)), None) => {
                    assert!(why.contains("not one offered"), "{why}")
                }
                (other, _) => panic!("{asked:?} answered {chosen}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn renamed_tokens_are_asked_for_and_checked() {
        let mut names = Names::default();
        names.type_tokens[UpgradeType::WebSocket as usize] = "ws".into();
        names.subprotocol_tokens = ["tcp".into(), "tcp-ping".into()];
        names.duplicate_upgrade_header = "x-tunnel".into();
        let ws = Framing::WebSocket(Subprotocol::Alpn);
        let (req, key) = client_request(ws, "h", "/t", &names);
        assert!(req.starts_with("GET /t HTTP/1.1\r\n"), "{req}");
        for line in [
            "Upgrade: ws\r\n",
            "x-tunnel: ws\r\n",
            "Sec-WebSocket-Protocol: tcp-ping, tcp\r\n",
        ] {
            assert!(req.contains(line), "{line:?} in {req}");
        }
        let key = key.unwrap();
        let switch = |upgrade: &str, sub: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {sub}\r\n\r\n",
                accept_key(&key)
            )
        };
        let answer = switch("ws", "TCP");
        let got = read_switch(&mut answer.as_bytes(), ws, Some(&key), &names).await;
        assert_eq!(got.unwrap().framing, ws);
        for (upgrade, sub) in [("websocket", "tcp"), ("ws", "alpn")] {
            let answer = switch(upgrade, sub);
            let got = read_switch(&mut answer.as_bytes(), ws, Some(&key), &names).await;
            assert!(
                matches!(got, Err(AnswerError::BadSwitch(_))),
                "{upgrade} {sub}: {got:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_with_a_short_body_keeps_its_status() {
        // Content-Length promises 100 bytes; 14 arrive and the connection stays open.
        let (mut server, mut client) = tokio::io::duplex(4096);
        server
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\npartial reason")
            .await
            .unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            read_switch(&mut client, Framing::Alpn, None, &Names::default()),
        )
        .await
        .expect("the status is reported without waiting for the whole body");
        match answer {
            Err(AnswerError::Status { status, reason, .. }) => {
                assert_eq!((status, reason.as_str()), (403, "partial reason"))
            }
            other => panic!("{other:?}"),
        }
        drop(server);
    }
}
