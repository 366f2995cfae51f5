//! The bodies of the fuzz targets, one `pub fn <target>(data: &[u8])` each: the
//! libFuzzer entries in `fuzz_targets/` call them under `cargo fuzz` (nightly),
//! and `tests/replay.rs` calls them on every file of `corpus/<target>/` on
//! stable, so the seeds and every crash ever found are replayed by `make test`.
//!
//! A target panics when an invariant breaks; returning is a pass. The stream
//! targets read their input as [`Input`]: one control byte, then chunk sizes,
//! then the bytes of the stream, delivered by [`Chunked`] in those chunks.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use alpn_protocol::client_addr::{derive, parse_addr, parse_net};
use alpn_protocol::framing::{AlpnPingStream, Framing, Role, Subprotocol, WebSocketStream};
use alpn_protocol::handshake::read_switch;
use alpn_protocol::names::Names;
use alpn_protocol::request::Request;
use alpn_protocol::websocket::{close_code_allowed, OP_CLOSE, OP_PONG};
use alpn_router::UpgradeError;
use alpn_tunnel::config_file::{ConfigFile, ConfigFileError};
use alpn_tunnel::proxy::ProxyUrl;
use alpn_tunnel::ServerUrl;
use alpn_upgrade_filter::config::{Config as FilterConfig, RateLimit};
use alpn_upgrade_filter::decision::{decide, Verdict};
use alpn_upgrade_filter::rate_limit::MemoryStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A fuzz input for the stream targets: `flags` (the high nibble of the first
/// byte) chooses a role or framing, the low nibble says how many chunk-size
/// bytes follow; the rest is the stream. A seed is `\x00` and the raw bytes (one
/// chunk); an empty input is an empty stream.
pub struct Input<'a> {
    /// The target's choice (role, framing), 0 to 15.
    pub flags: u8,
    /// Chunk sizes, each byte `n` a read of at most `n + 1` bytes, cycled.
    pub sizes: &'a [u8],
    /// The bytes of the stream.
    pub stream: &'a [u8],
}

impl Input<'_> {
    /// Splits `data` as described on [`Input`].
    pub fn parse(data: &[u8]) -> Input<'_> {
        let Some((&first, rest)) = data.split_first() else {
            return Input {
                flags: 0,
                sizes: &[],
                stream: &[],
            };
        };
        let k = usize::from(first & 0x0f).min(rest.len());
        Input {
            flags: first >> 4,
            sizes: &rest[..k],
            stream: &rest[k..],
        }
    }

    /// The stream, delivered in the input's chunks.
    pub fn chunked(&self) -> Chunked<'_> {
        Chunked {
            data: self.stream,
            sizes: self.sizes,
            next: 0,
            written: Vec::new(),
        }
    }
}

/// An in-memory peer: reads give the input in chunks and then EOF (never
/// pending), writes are collected.
pub struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
    /// What the code under test wrote.
    pub written: Vec<u8>,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = match this.sizes {
            [] => usize::MAX,
            s => usize::from(s[this.next % s.len()]) + 1,
        };
        this.next += 1;
        let n = size.min(this.data.len()).min(buf.remaining());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs `f` on this thread's runtime (timers on: the framings and the answer
/// check use them; the in-memory streams never wait, so none fires).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// Reads `s` to its end: what it delivered, and whether it ended cleanly.
async fn read_all<S: AsyncRead + Unpin>(s: &mut S, read_len: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_len.max(1)];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// The router's request path: raw bytes, in chunks, through
/// `alpn_router::accept_upgrade` (the HTTP head parser and the validation).
/// What it wrote must be the answer its result says.
pub fn router_request(data: &[u8]) {
    let input = Input::parse(data);
    let names = Names::default();
    let mut stream = input.chunked();
    let result = block_on(alpn_router::accept_upgrade(&mut stream, &names));
    let answer = String::from_utf8_lossy(&stream.written);
    match result {
        Ok(accepted) => {
            assert!(answer.starts_with("HTTP/1.1 101 "), "{answer:?}");
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = req.parse(input.stream) else {
                panic!("accepted a request httparse cannot read whole");
            };
            let hosts = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            assert_eq!(hosts.count(), 1, "exactly one Host (RFC 9112 section 3.2)");
            // The leftover is what was read past the head: the stream goes on with it.
            assert!(input.stream[head..].starts_with(&accepted.leftover));
        }
        Err(UpgradeError::Refused { status, reason }) => {
            assert!((400..600).contains(&status), "{status}");
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{answer:?}"
            );
            assert!(!reason.contains('\n'), "a one-line reason: {reason:?}");
        }
        Err(UpgradeError::Closed(n)) => {
            assert_eq!(n, input.stream.len());
            assert!(stream.written.is_empty());
        }
        Err(UpgradeError::Io(e)) => panic!("the in-memory stream does not fail: {e}"),
    }
}

/// The filter's configuration for [`filter_request`]: every policy on, so that
/// each is reached.
fn filter_config_fixture() -> &'static FilterConfig {
    static CONFIG: OnceLock<FilterConfig> = OnceLock::new();
    CONFIG.get_or_init(|| FilterConfig {
        trusted_hops: 2,
        trusted_proxies: ["10.0.0.0/8", "::1"]
            .iter()
            .map(|s| parse_net(s).expect("a CIDR"))
            .collect(),
        allowed_sources: Some(vec![parse_net("0.0.0.0/1").expect("a CIDR")]),
        rate_limit: Some(RateLimit {
            upgrades: 2,
            per_seconds: 1,
            slots: 16,
        }),
        ..FilterConfig::default()
    })
}

/// The filter's path: raw bytes through the HTTP head parser into the header
/// list Envoy hands the filter (lower-case names, pseudo-headers), then the
/// client address and the filter's decision. The request is decided twice, so
/// that the rate limit's second look at a bucket runs too.
pub fn filter_request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let mut list: Vec<(String, String)> = vec![
        (":method".into(), req.method.unwrap_or("").into()),
        (":path".into(), req.path.unwrap_or("").into()),
    ];
    list.extend(req.headers.iter().map(|h| {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).into_owned();
        if name == "host" {
            (":authority".to_string(), value)
        } else {
            (name, value)
        }
    }));
    let config = filter_config_fixture();
    let request = Request {
        method: req.method.unwrap_or(""),
        path: req.path.unwrap_or(""),
        headers: &list,
    };
    let peer = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    let client = derive(
        request.values("x-forwarded-for"),
        peer,
        config.trusted_hops,
        &config.trusted_proxies,
    );
    assert!(client.is_some(), "a known peer gives a client");
    let mut store = MemoryStore::default();
    for now_ms in [0, 1] {
        match decide(&request, config, client, &mut store, now_ms) {
            Verdict::Pass => assert!(!config.names.is_upgrade_path(request.path_only())),
            Verdict::Approve(_) => {}
            Verdict::Refuse(r) => {
                let status = r.kind.status();
                assert!((400..600).contains(&status), "{status}");
                assert!(
                    !r.reason.contains('\n'),
                    "a one-line reason: {:?}",
                    r.reason
                );
            }
        }
    }
}

/// The WebSocket key the client's answer check expects the answer to carry
/// the accept value of (RFC 6455's example).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The client's check of the upgrade answer (`read_switch`), on an answer in
/// chunks; the input's flags choose the framing asked for.
pub fn client_answer(data: &[u8]) {
    let input = Input::parse(data);
    let framing = match input.flags & 3 {
        0 => Framing::Alpn,
        1 => Framing::AlpnPing,
        2 => Framing::WebSocket(Subprotocol::Alpn),
        _ => Framing::WebSocket(Subprotocol::AlpnPing),
    };
    let key = matches!(framing, Framing::WebSocket(_)).then_some(KEY);
    let names = Names::default();
    let mut stream = input.chunked();
    if let Ok(switched) = block_on(read_switch(&mut stream, framing, key, &names)) {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = resp.parse(input.stream) else {
            panic!("switched on an answer httparse cannot read whole");
        };
        assert_eq!(resp.code, Some(101));
        // The leftover is what was read past the head: the stream goes on with it.
        assert!(input.stream[head..].starts_with(&switched.leftover));
        assert_eq!(
            switched.framing.upgrade_type(),
            framing.upgrade_type(),
            "the framing asked for"
        );
    }
    assert!(stream.written.is_empty(), "the check only reads");
}

/// The payload `alpn-ping` frames in `s` carry, written independently of the
/// stream: `u32` length, payload; a truncated last frame gives what is there.
/// Also whether `s` ends at a frame boundary.
fn alpn_ping_reference(mut s: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        if s.is_empty() {
            return (out, true);
        }
        let Some((len, rest)) = s.split_first_chunk::<4>() else {
            return (out, false);
        };
        let len = u32::from_be_bytes(*len) as usize;
        let take = len.min(rest.len());
        out.extend_from_slice(&rest[..take]);
        if take < len {
            return (out, false);
        }
        s = &rest[take..];
    }
}

/// The `alpn-ping` reader on a stream in chunks: it must deliver exactly the
/// payloads an independent decoder finds, and end cleanly exactly when the
/// stream ends at a frame boundary. It never writes (no pings configured).
pub fn alpn_ping_read(data: &[u8]) {
    let input = Input::parse(data);
    let role = if input.flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let read_len = input
        .sizes
        .first()
        .map_or(8192, |&b| usize::from(b) * 7 + 1);
    let mut inner = input.chunked();
    let (out, clean) = block_on(async {
        let mut s = AlpnPingStream::for_role(&mut inner, role, None);
        read_all(&mut s, read_len).await
    });
    assert!(
        inner.written.is_empty(),
        "no pings configured: nothing to write"
    );
    let (expected, boundary) = alpn_ping_reference(input.stream);
    assert_eq!(out, expected, "the payload bytes");
    assert_eq!(clean, boundary, "a clean end exactly at a frame boundary");
}

/// The WebSocket role the input's flags choose.
fn ws_role(flags: u8) -> Role {
    if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    }
}

/// Runs our WebSocket reader on the input: what it delivered, whether it ended
/// cleanly, and what it wrote back (Pongs, Closes).
fn ws_ours(input: &Input<'_>, role: Role) -> (Vec<u8>, bool, Vec<u8>) {
    let read_len = input
        .sizes
        .first()
        .map_or(8192, |&b| usize::from(b) * 7 + 1);
    let mut inner = input.chunked();
    let (out, clean) = block_on(async {
        let mut s = WebSocketStream::new(&mut inner, role, None);
        let (out, clean) = read_all(&mut s, read_len).await;
        // Send what is queued (a Pong, a Close) before looking at the writes.
        let _ = tokio::io::AsyncWriteExt::flush(&mut s).await;
        (out, clean)
    });
    (out, clean, inner.written)
}

/// The WebSocket reader (headers, masking, fragmentation, control frames,
/// Close codes) on a stream in chunks, in the role the flags choose. Whatever
/// the input, every frame it writes back must parse (with `tungstenite`) as a
/// complete Pong or Close, masked exactly when it is the client, and a Close
/// carries no code or an allowed one.
pub fn websocket_read(data: &[u8]) {
    let input = Input::parse(data);
    let role = ws_role(input.flags);
    let (_, _, written) = ws_ours(&input, role);
    let mut cursor = io::Cursor::new(&written[..]);
    while (cursor.position() as usize) < written.len() {
        let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
            .expect("a frame header")
            .expect("a whole frame header");
        let start = cursor.position() as usize;
        let len = usize::try_from(len).expect("a small frame");
        assert!(start + len <= written.len(), "a whole frame");
        assert!(header.is_final);
        assert_eq!(header.mask.is_some(), role == Role::Client, "masking");
        let opcode = u8::from(header.opcode);
        assert!(opcode == OP_PONG || opcode == OP_CLOSE, "opcode {opcode}");
        let mut payload = written[start..start + len].to_vec();
        if let Some(mask) = header.mask {
            alpn_protocol::websocket::apply_mask(&mut payload, mask, 0);
        }
        if opcode == OP_CLOSE {
            assert_ne!(payload.len(), 1, "a Close code is two bytes");
            if payload.len() >= 2 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                assert!(close_code_allowed(code), "Close code {code}");
            }
        }
        cursor.set_position((start + len) as u64);
    }
}

/// A blocking byte source for `tungstenite`: reads give the stream in the
/// same chunks, writes go elsewhere.
struct Blocking<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
}

impl io::Read for Blocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes {
            [] => usize::MAX,
            s => usize::from(s[self.next % s.len()]) + 1,
        };
        self.next += 1;
        let n = size.min(self.data.len()).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl io::Write for Blocking<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a frame in `s` encodes its length in more bytes than needed, which
/// RFC 6455 section 5.2 forbids: ours refuses it on a control frame (whose
/// 7-bit length must say 125 or less), tungstenite reads it, so the two may
/// part ways there for a reason that is not a defect.
fn has_non_minimal_length(mut s: &[u8]) -> bool {
    while let [_, b1, rest @ ..] = s {
        let (len, rest) = match b1 & 0x7f {
            126 => match rest.split_first_chunk::<2>() {
                Some((l, r)) => (u64::from(u16::from_be_bytes(*l)), r),
                None => return false,
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((l, r)) => (u64::from_be_bytes(*l), r),
                None => return false,
            },
            n => (u64::from(n), rest),
        };
        let minimal = match b1 & 0x7f {
            126 => len >= 126,
            127 => len > 0xffff,
            _ => true,
        };
        if !minimal {
            return true;
        }
        let rest = if b1 & 0x80 != 0 {
            rest.get(4..).unwrap_or(&[])
        } else {
            rest
        };
        let Ok(len) = usize::try_from(len) else {
            return false;
        };
        s = rest.get(len..).unwrap_or(&[]);
    }
    false
}

/// Differential: our WebSocket reader and `tungstenite` on the same bytes, in
/// the same role. Every binary message tungstenite delivers, we delivered too
/// (ours streams, so it may deliver more: an unfinished message, or frames
/// before an error it finds later); and where tungstenite finds a protocol
/// error before any Close, ours must not end cleanly. Inputs with a length
/// encoded in more bytes than needed are skipped (see [`has_non_minimal_length`]).
pub fn websocket_differential(data: &[u8]) {
    use tungstenite::error::{Error, ProtocolError};
    use tungstenite::Message;

    let input = Input::parse(data);
    if has_non_minimal_length(input.stream) {
        return;
    }
    let role = ws_role(input.flags);
    let (ours, clean, _) = ws_ours(&input, role);

    let ws_role = match role {
        Role::Server => tungstenite::protocol::Role::Server,
        Role::Client => tungstenite::protocol::Role::Client,
    };
    let raw = Blocking {
        data: input.stream,
        sizes: input.sizes,
        next: 0,
    };
    let mut ws = tungstenite::WebSocket::from_raw_socket(raw, ws_role, None);
    let mut theirs = Vec::new();
    let mut protocol_error = None;
    for _ in 0..input.stream.len() + 1 {
        match ws.read() {
            Ok(Message::Binary(b)) => theirs.extend_from_slice(&b),
            Ok(Message::Text(_)) | Ok(Message::Close(_)) => break,
            Ok(_) => {}
            // The end of the bytes between frames is a clean end for ours
            // (the tunnel's TCP ending), a reset for tungstenite.
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break,
            Err(e @ (Error::Protocol(_) | Error::Utf8(_))) => {
                protocol_error = Some(e);
                break;
            }
            Err(_) => break,
        }
    }
    assert!(
        ours.starts_with(&theirs),
        "tungstenite delivered {} bytes that ours did not (ours: {})",
        theirs.len(),
        ours.len()
    );
    if let Some(e) = protocol_error {
        assert!(!clean, "tungstenite found {e}, ours ended cleanly");
    }
}

/// Addresses and ports from the input for [`proxy_v2`]: IPv4, IPv6 or
/// IPv4-mapped IPv6 on either side, as the flags say.
fn socket_addr(kind: u8, bytes: &[u8; 18]) -> SocketAddr {
    let port = u16::from_be_bytes([bytes[16], bytes[17]]);
    let ip = match kind % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        1 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&bytes[..16]).expect("16 bytes"),
        )),
        _ => IpAddr::V6(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_ipv6_mapped()),
    };
    SocketAddr::new(ip, port)
}

/// The PROXY v2 encoder round-tripped through `ppp`, an independent parser:
/// one whole header, PROXY over TCP, the same addresses (canonical) and ports,
/// IPv4 exactly when both ends are IPv4.
pub fn proxy_v2(data: &[u8]) {
    use ppp::v2::{Addresses, Command, Header, Protocol};

    let mut bytes = [0u8; 37];
    let n = data.len().min(37);
    bytes[..n].copy_from_slice(&data[..n]);
    let client = socket_addr(bytes[0], bytes[1..19].try_into().expect("18 bytes"));
    let local = socket_addr(bytes[0] / 3, bytes[19..37].try_into().expect("18 bytes"));
    let encoded = alpn_router::proxy_v2_header(client, local);
    let header = Header::try_from(&encoded[..]).expect("ppp reads the header");
    assert_eq!(header.len(), encoded.len(), "one header, nothing after it");
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.protocol, Protocol::Stream);
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let v4 = client.ip().to_canonical().is_ipv4() && local.ip().to_canonical().is_ipv4();
    let (src, dst) = match header.addresses {
        Addresses::IPv4(a) => {
            assert!(v4, "IPv4 only when both ends are");
            (
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )
        }
        Addresses::IPv6(a) => {
            assert!(!v4, "IPv6 only when an end is");
            (
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )
        }
        other => panic!("unexpected addresses {other:?}"),
    };
    assert_eq!(canonical(src), canonical(client));
    assert_eq!(canonical(dst), canonical(local));
}

/// The filter's JSON configuration: parsing never panics, and a configuration
/// accepted once is accepted again the same (parsing is deterministic).
pub fn filter_config(data: &[u8]) {
    let first = FilterConfig::parse(data);
    let second = FilterConfig::parse(data);
    assert_eq!(first, second);
}

/// A directory with a certificate and its key (`cert.pem`, `key.pem`) and a CA
/// (`ca.pem`), so that configurations naming them get past the file checks.
fn cert_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = rcgen::KeyPair::generate().expect("a key");
        let params = rcgen::CertificateParams::new(vec!["router.test".into()]).expect("params");
        let cert = params.self_signed(&key).expect("a certificate");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write");
        let path = dir.path().join("router.toml");
        (dir, path)
    })
    .1
}

/// The router's TOML configuration, from text to a validated `Config` or an
/// error naming a key: never a panic.
pub fn router_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = alpn_router::Config::parse(text, cert_dir());
}

/// The client's configuration file (`alpn-tunnel up`, `check-config`), as
/// `client.toml` next to a real certificate, key and CA (`cert.pem`,
/// `key.pem`, `ca.pem`) so that valid files get past the file checks. Parsing
/// is deterministic (the same file twice gives equal results or the same
/// error); an error is a key error that names a key of the file (`.` for the
/// whole file, else a dotted path under a top-level key, or the unknown key);
/// a file that parses has distinct forward names, listen addresses that do not
/// clash, ALPNs of 1 to 255 bytes, and forwards that carry their server as
/// the file's `servers` have it.
pub fn client_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = cert_dir().with_file_name("client.toml");
    let first = ConfigFile::parse(text, &file);
    let second = ConfigFile::parse(text, &file);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.drain, b.drain);
            assert_eq!(a.servers, b.servers);
            assert_eq!(a.forwards, b.forwards);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("{text:?} parsed once as {first:?}, then as {second:?}"),
    }
    match first {
        Ok(config) => {
            for (i, f) in config.forwards.iter().enumerate() {
                assert!((1..=255).contains(&f.alpn.len()), "{:?}", f.alpn);
                assert_eq!(config.servers.get(&f.server.name), Some(&f.server));
                for g in &config.forwards[..i] {
                    assert_ne!(f.name, g.name, "two forwards named alike");
                    let clash = f.listen.port() != 0 && f.listen == g.listen;
                    assert!(!clash, "two forwards on {}", f.listen);
                }
            }
        }
        Err(ConfigFileError::Key { path, key, message }) => {
            assert_eq!(path, file);
            assert!(!message.is_empty(), "no message for key {key:?}");
            let top = key.split(['.', '[']).next().unwrap_or_default();
            let known = ["drain", "cache_ttl", "servers", "forward"].contains(&top);
            assert!(
                key == "." || known || message.starts_with("unknown field"),
                "key {key:?} names nothing of the file: {message}"
            );
        }
        Err(other) => panic!("not a key error: {other:?}"),
    }
}

/// The client's server URL (and proxy URL): a URL that parses prints as one
/// that parses to the same.
pub fn server_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = ServerUrl::parse(text) {
        let printed = url.to_string();
        let again = ServerUrl::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, url, "{text:?} printed as {printed:?}");
    }
    let _ = ProxyUrl::parse(text);
}

/// The client address: lines are the peer, the trusted hops (a number), the
/// trusted proxies (comma-separated CIDRs), then `X-Forwarded-For` lines. The
/// client is the peer or one of the last `trusted_hops` entries, the peer when
/// it is not trusted, and unknown only without a peer.
pub fn client_addr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let peer = lines.next().and_then(parse_addr);
    let hops: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(1);
    let proxies: Vec<_> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|s| parse_net(s.trim()))
        .collect();
    let xff: Vec<&str> = lines.collect();
    let client = derive(xff.iter().copied(), peer, hops, &proxies);
    assert_eq!(client.is_some(), peer.is_some());
    let (Some(peer), Some(client)) = (peer, client) else {
        return;
    };
    let trusted = |a: IpAddr| proxies.iter().any(|n| n.contains(&a));
    if hops == 0 || !trusted(peer) {
        assert_eq!(client, peer);
        return;
    }
    let entries: Vec<&str> = xff
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let believed: Vec<IpAddr> = entries
        .iter()
        .rev()
        .take(hops as usize)
        .filter_map(|e| parse_addr(e))
        .collect();
    assert!(
        client == peer || believed.contains(&client),
        "{client} is neither the peer nor a believed entry"
    );
    assert_eq!(client, client.to_canonical(), "canonical");
}
