//! [`Framed`]: an upgraded stream in its framing, the ping timer, and how a
//! tunnel's outer connection ends ([`Finish`]).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{websocket, AlpnPingStream, Framing, Role, WebSocketStream, MAX_SLICES};

/// Any stream a tunnel can carry: the router's and the client's streams are
/// boxed as this.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a tunnel ended, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The backend ended cleanly (or the router closed a quiet tunnel): TLS
    /// `close_notify`, WebSocket Close 1000.
    Clean,
    /// The backend failed (reset, refused, unreachable) or a read or write
    /// failed: no `close_notify`, WebSocket Close 1011, so the client sees a
    /// truncation rather than a clean end.
    Failed,
    /// The router is shutting down and the drain grace period is over: TLS
    /// `close_notify`, WebSocket Close 1001 (going away).
    GoingAway,
}

/// The end of an outer connection once the inner TLS is over.
pub trait Finish: AsyncRead + AsyncWrite + Unpin + Send {
    /// Tells the peer how the tunnel ended where the framing can (a WebSocket
    /// Close; after a failure, the end of the stream at once), then reads and
    /// discards until the peer ends its side, at most `deadline`. Closing before
    /// that would turn what the peer still sends (a Pong, a ping, its Close) into
    /// a reset that destroys data it has not read yet.
    fn finish(&mut self, ending: Ending, deadline: Duration) -> impl Future<Output = ()> + Send;
}

/// Reads and discards until the peer ends its side (EOF, or an error), or
/// `limit` bytes were discarded.
pub async fn discard_until_end<S: AsyncRead + Unpin + ?Sized>(stream: &mut S, limit: u64) {
    let mut scratch = [0u8; 4096];
    let mut total = 0u64;
    while total < limit {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
}

/// An upgraded stream in its framing; bytes already read past the HTTP head
/// (`leftover`) are the first bytes of the framed stream.
///
/// It never half-closes the outer connection: load balancers and Envoy end an
/// upgraded connection in both directions when one side closes its half, which
/// would cut off bytes still coming the other way. A write shutdown only
/// flushes while the peer may still send; half-close travels inside, as the
/// inner TLS `close_notify`. The outer connection closes (FIN, or a WebSocket
/// Close) once the read side has ended, or when the stream is dropped.
pub struct Framed<S> {
    kind: Kind<S>,
    /// The framing in use (logs and the probe name it).
    framing: Framing,
    /// The read side has ended (EOF or a Close frame).
    read_done: bool,
    /// [`Framed::poll_close`] has begun: our end of the framing is out (a
    /// WebSocket Close queued, or FIN), and this much has been discarded since.
    closing: Option<u64>,
}

enum Kind<S> {
    Raw(Prefixed<S>),
    AlpnPing(AlpnPingStream<Prefixed<S>>),
    WebSocket(Box<WebSocketStream<Prefixed<S>>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Frames `inner` as `framing` for `role`, pinging where
    /// [`Framing::pings_as`] says so: a server every `ping_interval`, a client
    /// after `ping_interval` with nothing sent (zero disables pings). Must be
    /// called inside a tokio runtime.
    pub fn new(
        framing: Framing,
        role: Role,
        inner: S,
        leftover: Vec<u8>,
        ping_interval: Duration,
    ) -> Framed<S> {
        let inner = Prefixed::new(inner, leftover);
        let ping = framing.pings_as(role).then_some(ping_interval);
        let kind = match framing {
            Framing::Alpn => Kind::Raw(inner),
            Framing::AlpnPing => Kind::AlpnPing(AlpnPingStream::for_role(inner, role, ping)),
            Framing::WebSocket(_) => {
                Kind::WebSocket(Box::new(WebSocketStream::new(inner, role, ping)))
            }
        };
        Framed {
            kind,
            framing,
            read_done: false,
            closing: None,
        }
    }

    /// The closing handshake of a tunnel whose inner TLS is over both ways
    /// (`close_notify` sent and received), for the side that closes last (the
    /// client): our end of the framing (a WebSocket Close 1000 unless the
    /// peer's Close came first; FIN for `alpn` and `alpn-ping`, which have no
    /// Close), then reading and discarding through the framing (answering
    /// Pings, skipping pings) until the peer's Close or EOF, then FIN.
    /// `Ready(Ok)` once the peer has ended its side; an error if the
    /// connection failed on the way, or more than [`DISCARD_LIMIT`] arrived.
    /// The caller bounds it with a deadline. Closing without it would turn a
    /// late ping, Pong or Close from the peer into a reset, which destroys
    /// what we sent that the peer has not read yet.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing.is_none() {
            match &mut self.kind {
                Kind::WebSocket(ws) => ws.queue_close(websocket::CLOSE_NORMAL),
                Kind::Raw(s) => ready!(Pin::new(s).poll_shutdown(cx))?,
                Kind::AlpnPing(s) => ready!(Pin::new(s).poll_shutdown(cx))?,
            }
            self.closing = Some(0);
        }
        if let Kind::WebSocket(ws) = &mut self.kind {
            ready!(Pin::new(&mut **ws).poll_flush(cx))?;
        }
        let mut scratch = [0u8; 4096];
        while !self.read_done {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut *self).poll_read(cx, &mut buf)) {
                Ok(()) => {}
                // Raw and alpn-ping end with the transport's end: one without
                // the outer TLS's close_notify (load balancers often close so)
                // is that end all the same; the inner TLS has said whether the
                // data was whole.
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        && !matches!(self.kind, Kind::WebSocket(_)) =>
                {
                    self.read_done = true;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            let discarded = self.closing.get_or_insert(0);
            *discarded += buf.filled().len() as u64;
            if *discarded > DISCARD_LIMIT {
                return Poll::Ready(Err(io::Error::other(format!(
                    "the peer sent more than {DISCARD_LIMIT} bytes after the end of the tunnel"
                ))));
            }
        }
        // Our Close and the peer's are out: now the TCP (or outer TLS) end.
        match &mut self.kind {
            Kind::WebSocket(ws) => Pin::new(&mut **ws).poll_shutdown(cx),
            Kind::Raw(_) | Kind::AlpnPing(_) => Poll::Ready(Ok(())),
        }
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
    }
}

macro_rules! delegate {
    ($kind:expr, $s:ident => $e:expr) => {
        match $kind {
            Kind::Raw($s) => $e,
            Kind::AlpnPing($s) => $e,
            Kind::WebSocket($s) => $e,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let result = delegate!(&mut this.kind, s => Pin::new(s).poll_read(cx, buf));
        if room && matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            this.read_done = true;
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Finish for Framed<S> {
    async fn finish(&mut self, ending: Ending, deadline: Duration) {
        use tokio::io::AsyncWriteExt;
        let wait = async {
            match &mut self.kind {
                // A WebSocket tunnel ends with the closing handshake: our Close
                // (1000; 1011 when the tunnel failed; 1001 when the router is
                // going away), then the peer's.
                Kind::WebSocket(ws) => {
                    ws.queue_close(match ending {
                        Ending::Clean => websocket::CLOSE_NORMAL,
                        Ending::Failed => websocket::CLOSE_INTERNAL_ERROR,
                        Ending::GoingAway => websocket::CLOSE_GOING_AWAY,
                    });
                    let _ = ws.flush().await;
                }
                // No framing-level close: a failed tunnel ends with FIN at
                // once; after a clean one the client closes once it has read
                // the close_notify (a FIN from here would make a load balancer
                // end both directions while the client may still ping).
                Kind::Raw(s) if ending == Ending::Failed => {
                    let _ = s.shutdown().await;
                }
                Kind::AlpnPing(s) if ending == Ending::Failed => {
                    let _ = s.shutdown().await;
                }
                Kind::Raw(_) | Kind::AlpnPing(_) => {}
            }
            // Reads through the framing until the peer's Close or EOF.
            discard_until_end(self, DISCARD_LIMIT).await;
        };
        let _ = tokio::time::timeout(deadline, wait).await;
    }
}

/// The most a closing tunnel discards while it waits for the peer.
const DISCARD_LIMIT: u64 = 64 << 20;

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Framed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(&mut self.get_mut().kind, s => Pin::new(s).poll_write(cx, buf))
    }

    /// Passed on: each framing writes several TLS records in one frame and
    /// one system call (rustls writes them vectored).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(&mut self.get_mut().kind, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        delegate!(&self.kind, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(&mut self.get_mut().kind, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_done {
            delegate!(&mut this.kind, s => Pin::new(s).poll_shutdown(cx))
        } else {
            delegate!(&mut this.kind, s => Pin::new(s).poll_flush(cx))
        }
    }
}

/// Writes what is left of a frame's `header` and up to `len` bytes of
/// `bufs` (its payload) to `inner` in one vectored write; returns how many
/// bytes of both the write took. A frame, header and payload, then costs one
/// system call, however many slices (TLS records) the payload is in.
pub(crate) fn poll_write_frame<S: AsyncWrite + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    header: &[u8],
    bufs: &[IoSlice<'_>],
    len: usize,
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
    let mut k = 0;
    if !header.is_empty() {
        slices[0] = IoSlice::new(header);
        k = 1;
    }
    let mut left = len;
    for b in bufs.iter().filter(|b| !b.is_empty()) {
        if left == 0 || k == slices.len() {
            break;
        }
        let take = b.len().min(left);
        slices[k] = IoSlice::new(&b[..take]);
        k += 1;
        left -= take;
    }
    Pin::new(inner).poll_write_vectored(cx, &slices[..k])
}

/// A stream whose first bytes were already read (past the HTTP head).
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is returned by reads before anything from `inner`.
    pub fn new(inner: S, prefix: Vec<u8>) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The ping timer of a framing. A server pings every period, starting one
/// period from now. A client pings only after a quiet send side: each data
/// write ([`Pinger::sent`]) pushes its next ping to one period later, so a
/// busy tunnel carries no pings and a quiet one is pinged whether or not the
/// server pings.
pub(crate) struct Pinger {
    interval: Option<Interval>,
    /// When data was last written, for a client; `None` for a server (fixed interval).
    last_sent: Option<Instant>,
}

impl Pinger {
    /// A server's timer: a ping every `period` (none, or zero, disables it).
    pub(crate) fn new(period: Option<Duration>) -> Pinger {
        let interval = period.filter(|p| !p.is_zero()).map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Pinger {
            interval,
            last_sent: None,
        }
    }

    /// The timer for `role`: a server's fixed interval, or a client's ping
    /// after `period` with nothing sent.
    pub(crate) fn for_role(role: Role, period: Option<Duration>) -> Pinger {
        let mut pinger = Pinger::new(period);
        if role == Role::Client && pinger.interval.is_some() {
            pinger.last_sent = Some(Instant::now());
        }
        pinger
    }

    /// Data was written: a client's next ping is one period from now.
    pub(crate) fn sent(&mut self) {
        if let Some(last) = &mut self.last_sent {
            *last = Instant::now();
        }
    }

    /// Whether a ping is due; registers the task to be woken at the next one
    /// (the interval is polled until it is pending, which arms its timer).
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        let mut due = false;
        if let Some(i) = &mut self.interval {
            while i.poll_tick(cx).is_ready() {
                match self.last_sent {
                    // Something was sent within the period: no ping yet.
                    Some(last) if last + i.period() > Instant::now() => {
                        i.reset_at(last + i.period());
                    }
                    _ => due = true,
                }
            }
        }
        due
    }
}

/// Reads from `inner` into at most `max` bytes of `buf`; returns how many.
pub(crate) fn poll_read_limited<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    max: usize,
) -> Poll<io::Result<usize>> {
    let want = max.min(buf.remaining());
    let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
    match Pin::new(inner).poll_read(cx, &mut limited) {
        Poll::Ready(Ok(())) => {
            let n = limited.filled().len();
            buf.advance(n);
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Reads exactly `dst.len()` bytes over as many polls as it takes: `filled` is
/// how many are already in. `Ok(false)` is a clean EOF before the first byte.
pub(crate) fn poll_fill<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    dst: &mut [u8],
    filled: &mut usize,
) -> Poll<io::Result<bool>> {
    while *filled < dst.len() {
        let mut rb = ReadBuf::new(&mut dst[*filled..]);
        match Pin::new(&mut *inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    if *filled == 0 {
                        return Poll::Ready(Ok(false));
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tunnel closed inside a frame header",
                    )));
                }
                *filled += n;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Ok(true))
}

#[cfg(test)]
mod tests {
    use super::super::test_wire::CountingWire;
    use super::super::Subprotocol;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::timeout;

    /// Reads one frame's first two bytes and skips the rest of it (a client's
    /// frames carry a mask key); returns the first byte and the payload length.
    async fn websocket_frame(wire: &mut DuplexStream) -> (u8, usize) {
        let mut h = [0u8; 2];
        wire.read_exact(&mut h).await.unwrap();
        let len = usize::from(h[1] & 0x7f);
        assert!(len < 126, "short frames only here");
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let mut rest = vec![0u8; mask + len];
        wire.read_exact(&mut rest).await.unwrap();
        (h[0], len)
    }

    /// A client stream with a read pending, as a tunnel's copy loop holds it.
    fn reading(mut framed: Framed<DuplexStream>) -> tokio::task::JoinHandle<io::Result<usize>> {
        tokio::spawn(async move { framed.read(&mut [0u8; 16]).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_client_pings_in_every_framing_that_can() {
        for framing in [
            Framing::AlpnPing,
            Framing::WebSocket(Subprotocol::Alpn),
            Framing::WebSocket(Subprotocol::AlpnPing),
        ] {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let framed = Framed::new(
                framing,
                Role::Client,
                a,
                Vec::new(),
                Duration::from_secs(30),
            );
            let reader = reading(framed);
            tokio::time::sleep(Duration::from_secs(31)).await;
            // A deadline of its own: without a ping nothing would ever arrive.
            let no_ping = format!("{framing:?}: no ping after 31 s of quiet");
            if framing == Framing::AlpnPing {
                let mut ping = [0xffu8; 4];
                timeout(Duration::from_secs(1), wire.read_exact(&mut ping))
                    .await
                    .expect(&no_ping)
                    .unwrap();
                assert_eq!(ping, [0; 4], "an empty alpn-ping frame");
            } else {
                let frame = timeout(Duration::from_secs(1), websocket_frame(&mut wire))
                    .await
                    .expect(&no_ping);
                assert_eq!(frame, (0x89, 0), "{framing:?}: a Ping");
            }
            reader.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_does_not_ping_and_raw_alpn_never_does() {
        for framing in [
            Framing::WebSocket(Subprotocol::Alpn),
            Framing::WebSocket(Subprotocol::AlpnPing),
            Framing::AlpnPing,
            Framing::Alpn,
        ] {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let mut framed = Framed::new(
                framing,
                Role::Client,
                a,
                Vec::new(),
                Duration::from_secs(30),
            );
            // A byte every 20 s for 100 s, with a read pending in between.
            let sender = tokio::spawn(async move {
                let mut sink = [0u8; 1];
                for _ in 0..5 {
                    framed.write_all(b"x").await.unwrap();
                    framed.flush().await.unwrap();
                    let quiet = timeout(Duration::from_secs(20), framed.read(&mut sink));
                    assert!(quiet.await.is_err(), "nothing to read");
                }
                if framing == Framing::Alpn {
                    // Raw alpn cannot ping, however long it is quiet.
                    let quiet = timeout(Duration::from_secs(100), framed.read(&mut sink));
                    assert!(quiet.await.is_err(), "nothing to read");
                }
            });
            sender.await.unwrap();
            let mut wire_bytes = Vec::new();
            wire.read_to_end(&mut wire_bytes).await.unwrap();
            match framing {
                Framing::Alpn => assert_eq!(wire_bytes, b"xxxxx"),
                Framing::AlpnPing => assert_eq!(wire_bytes, b"\0\0\0\x01x".repeat(5)),
                Framing::WebSocket(_) => {
                    // Five masked one-byte binary frames, no Ping among them.
                    let mut frames = &wire_bytes[..];
                    for _ in 0..5 {
                        assert_eq!(&frames[..2], &[0x82, 0x81], "{wire_bytes:?}");
                        frames = &frames[7..];
                    }
                    assert!(frames.is_empty(), "only data: {wire_bytes:?}");
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_pings_only_where_the_framing_says_and_zero_disables() {
        for (framing, interval, pings) in [
            (Framing::WebSocket(Subprotocol::Alpn), 30, false),
            (Framing::WebSocket(Subprotocol::AlpnPing), 0, false),
            (Framing::WebSocket(Subprotocol::AlpnPing), 30, true),
        ] {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let framed = Framed::new(
                framing,
                Role::Server,
                a,
                Vec::new(),
                Duration::from_secs(interval),
            );
            let reader = reading(framed);
            tokio::time::sleep(Duration::from_secs(31)).await;
            reader.abort();
            let _ = reader.await;
            let mut wire_bytes = Vec::new();
            wire.read_to_end(&mut wire_bytes).await.unwrap();
            let expected: &[u8] = if pings { &[0x89, 0] } else { &[] };
            assert_eq!(wire_bytes, expected, "{framing:?} every {interval} s");
        }
    }

    #[tokio::test]
    async fn a_close_other_than_1000_or_1001_is_an_error_for_the_reader() {
        for (code, clean) in [(1000u16, true), (1001, true), (1011, false)] {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let mut framed = Framed::new(
                Framing::WebSocket(Subprotocol::Alpn),
                Role::Client,
                a,
                Vec::new(),
                Duration::ZERO,
            );
            let [hi, lo] = code.to_be_bytes();
            wire.write_all(&[0x88, 2, hi, lo]).await.unwrap();
            let read = framed.read(&mut [0u8; 16]).await;
            if clean {
                assert_eq!(read.unwrap(), 0, "{code} is a clean end");
            } else {
                let e = read.unwrap_err();
                assert!(
                    e.to_string()
                        .contains("the server closed the tunnel with WebSocket code 1011"),
                    "{e}"
                );
            }
        }
    }

    /// Several TLS records, handed over at once as rustls does, leave in one
    /// write on every framing, the frame header included (before, `Framed`
    /// passed on one record per write, and `alpn-ping` wrote each frame's
    /// header apart: two system calls per record).
    #[tokio::test]
    async fn records_handed_over_together_leave_in_one_write_on_every_framing() {
        let records: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 16_406]).collect();
        let slices: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        let framings = [
            (Framing::Alpn, 0),
            (Framing::AlpnPing, 4),
            // A server's frame over 64 KiB: 2 bytes and a 64-bit length.
            (Framing::WebSocket(Subprotocol::Alpn), 10),
        ];
        for (framing, header) in framings {
            let wire = CountingWire::default();
            let mut framed = Framed::new(
                framing,
                Role::Server,
                wire.clone(),
                Vec::new(),
                Duration::ZERO,
            );
            assert!(framed.is_write_vectored(), "{}", framing.name());
            let n = framed.write_vectored(&slices).await.unwrap();
            assert_eq!(n, 4 * 16_406, "{}: all four records", framing.name());
            assert_eq!(wire.writes(), 1, "{}: one write", framing.name());
            let bytes = wire.bytes();
            assert_eq!(bytes.len(), header + n, "{}", framing.name());
            assert!(
                bytes[header..] == records.concat()[..],
                "{}",
                framing.name()
            );
            if framing == Framing::AlpnPing {
                assert_eq!(bytes[..4], (n as u32).to_be_bytes(), "one frame");
            }
        }
    }
}
