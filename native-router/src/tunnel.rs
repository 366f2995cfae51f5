//! The tunnel: dial the route's backend (with a deadline, the optional PROXY v2
//! header and optional TLS), then copy both directions until both are done. An
//! EOF from one side becomes a write shutdown towards the other (TLS sends its
//! `close_notify`), so half-closed protocols lose no byte. A read or write error
//! ends the tunnel as failed (which side failed is recorded), and so does a side
//! that takes none of the bytes waiting for it for the send timeout (as nginx's
//! `send_timeout`), so that the client is not told of a clean end; and the end of the outer connection ([`Finish`])
//! waits for the peer, so that no close turns its late bytes into a reset.
//! When the drain grace period of a shutdown ends, the pipe stops and the
//! tunnel is closed deliberately ([`End::Shutdown`], [`Ending::GoingAway`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use alpn_protocol::framing::{discard_until_end, Ending, Finish};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Limits, Route};
use crate::metrics::RouteBytes;
use crate::proxy_protocol;
use crate::tls::BackendConnector;

/// Any stream a tunnel can carry (the protocol crate's).
pub(crate) use alpn_protocol::framing::Io;

/// Why a backend could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// No connection within the deadline.
    #[error("connecting to {backend} timed out after {after:?}")]
    Timeout {
        /// The backend.
        backend: String,
        /// The deadline.
        after: Duration,
    },
    /// Resolving or connecting failed (refused, unreachable, unknown host).
    #[error("connecting to {backend}: {error}")]
    Connect {
        /// The backend.
        backend: String,
        /// The error.
        error: io::Error,
    },
    /// The TLS handshake with the backend failed.
    #[error("TLS to {backend}: {error}")]
    Tls {
        /// The backend.
        backend: String,
        /// The error.
        error: io::Error,
    },
}

/// Connects to `route`'s backend for a client at `client` that reached the
/// router at `local`, with TLS through `tls` when the route has it (the
/// generation's connector for the route: built once, so sessions resume),
/// within `limits.connect_timeout` and with `limits`' TCP options.
pub(crate) async fn dial(
    route: &Route,
    tls: Option<&BackendConnector>,
    client: SocketAddr,
    local: SocketAddr,
    limits: &Limits,
) -> Result<Box<dyn Io>, DialError> {
    let deadline = limits.connect_timeout;
    let backend = route.backend.clone();
    let work = async {
        let mut tcp =
            TcpStream::connect(&route.backend)
                .await
                .map_err(|error| DialError::Connect {
                    backend: backend.clone(),
                    error,
                })?;
        let _ = tcp.set_nodelay(true);
        crate::sockets::set_tcp_options(&tcp, limits);
        if route.proxy_protocol {
            tcp.write_all(&proxy_protocol::header(client, local))
                .await
                .map_err(|error| DialError::Connect {
                    backend: backend.clone(),
                    error,
                })?;
        }
        let Some(tls) = tls else {
            return Ok(Box::new(tcp) as Box<dyn Io>);
        };
        let stream = tls.connect(tcp).await.map_err(|error| DialError::Tls {
            backend: backend.clone(),
            error,
        })?;
        Ok(Box::new(stream) as Box<dyn Io>)
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout {
            backend,
            after: deadline,
        }),
    }
}

/// How long a closing connection is read and discarded, so that bytes still in
/// flight from the peer do not make the kernel answer with a reset (which would
/// destroy data the peer has not read yet, such as a refusal or the end of a tunnel).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// A lingering close of `socket`: send FIN if not sent, then read and discard
/// until EOF, at most [`LINGER`] and 1 MiB.
pub(crate) async fn linger(mut socket: TcpStream) {
    let _ = socket.shutdown().await;
    let _ = tokio::time::timeout(LINGER, discard_until_end(&mut socket, 1 << 20)).await;
}

/// The most a closing connection discards while it waits for the peer.
const DISCARD_LIMIT: u64 = 64 << 20;

impl Finish for Lingering {
    async fn finish(&mut self, ending: Ending, deadline: Duration) {
        // Direct TLS has no framing: a failed tunnel ends with FIN at once; a
        // clean one already sent FIN behind its close_notify.
        if ending == Ending::Failed {
            let _ = self.shutdown().await;
        }
        let _ = tokio::time::timeout(deadline, discard_until_end(self, DISCARD_LIMIT)).await;
    }
}

/// How much a client connection reads from the kernel at a time while bytes
/// flow: rustls asks for 4 KiB per read, a WebSocket header for 2 to 14 bytes,
/// and each ask would otherwise be a system call of its own.
const READ_AHEAD: usize = 32 * 1024;
/// Reads go straight to the socket until this much has come in: handshakes
/// and short exchanges gain nothing from reading ahead and would pay for a
/// buffer taken and given back at every read.
const READ_AHEAD_AFTER: usize = 16 * 1024;

/// A client connection that closes with a [`linger`] when the connection code
/// drops it, wherever that happens (inside TLS, a framing, the pipe). It holds
/// the connection's place under the cap until the lingering close is over.
/// One descriptor per connection: no duplicate is kept for the close.
///
/// Once past [`READ_AHEAD_AFTER`] bytes, reads go through a read-ahead buffer
/// of up to [`READ_AHEAD`], held only while bytes flow: it is given back when
/// the socket has nothing to read, so an idle connection holds none.
pub(crate) struct Lingering {
    socket: Option<TcpStream>,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Tracks the lingering close, so that a shutdown waits for it.
    tracker: Option<TaskTracker>,
    /// Bytes read from the socket and not yet passed on.
    ahead: BytesMut,
    /// Bytes read from the socket so far (up to [`READ_AHEAD_AFTER`]).
    carried: usize,
}

impl Lingering {
    /// Wraps `socket`, holding `place` until it is closed.
    pub(crate) fn new(socket: TcpStream, place: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        Lingering {
            socket: Some(socket),
            place,
            tracker: None,
            ahead: BytesMut::new(),
            carried: 0,
        }
    }

    /// Runs the lingering close as a task of `tracker`.
    pub(crate) fn tracked(mut self, tracker: TaskTracker) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// The local address of the connection.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream().local_addr()
    }

    fn stream(&self) -> &TcpStream {
        self.socket.as_ref().expect("taken only on drop")
    }

    fn pinned(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.socket.as_mut().expect("taken only on drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(socket), place) = (self.socket.take(), self.place.take()) else {
            return;
        };
        // Outside a runtime (it is shutting down) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let close = async move {
                linger(socket).await;
                drop(place);
            };
            match &self.tracker {
                Some(tracker) => drop(tracker.spawn_on(close, &runtime)),
                None => drop(runtime.spawn(close)),
            }
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.ahead.is_empty() {
            if buf.remaining() >= READ_AHEAD || self.carried < READ_AHEAD_AFTER {
                // Early on, or as large as the read-ahead: straight into the
                // caller's buffer.
                let before = buf.filled().len();
                let read = self.pinned().poll_read(cx, buf);
                self.carried = self
                    .carried
                    .saturating_add(buf.filled().len() - before)
                    .min(READ_AHEAD_AFTER);
                return read;
            }
            self.ahead.reserve(READ_AHEAD);
            let this = &mut *self;
            let socket = Pin::new(this.socket.as_mut().expect("taken only on drop"));
            match tokio_util::io::poll_read_buf(socket, cx, &mut this.ahead) {
                Poll::Ready(Ok(_)) => {} // Zero bytes: EOF, passed on below.
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: give the buffer back until bytes come.
                    this.ahead = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        let n = buf.remaining().min(self.ahead.len());
        buf.put_slice(&self.ahead[..n]);
        self.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_shutdown(cx)
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides finished.
    Closed,
    /// No byte either way for the route's idle timeout.
    Idle(Duration),
    /// One direction had ended and no byte came for this long.
    HalfClosed(Duration),
    /// A read or write failed (a reset, a TLS or framing error) on this side.
    Error(Side, io::Error),
    /// This side took none of the bytes waiting for it for this long.
    Stalled(Side, Duration),
    /// The router shut down and the drain grace period ended first.
    Shutdown,
}

impl End {
    /// What the client is told: a failure is not a clean end.
    pub(crate) fn ending(&self) -> Ending {
        match self {
            End::Error(..) | End::Stalled(..) => Ending::Failed,
            End::Shutdown => Ending::GoingAway,
            _ => Ending::Clean,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => write!(f, "both sides closed"),
            End::Idle(t) => write!(f, "idle for {}", humantime::format_duration(*t)),
            End::HalfClosed(t) => write!(
                f,
                "half-closed and quiet for {}",
                humantime::format_duration(*t)
            ),
            End::Error(side, e) => write!(f, "{side} error: {e}"),
            End::Stalled(side, t) => write!(
                f,
                "{side} stalled: it took no byte for {}",
                humantime::format_duration(*t)
            ),
            End::Shutdown => write!(f, "closed by the router: the drain grace period is over"),
        }
    }
}

impl End {
    /// The reason label of `alpn_router_tunnels_ended`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle(_) => "idle",
            End::HalfClosed(_) => "half_closed",
            End::Error(Side::Client, _) => "client_error",
            End::Error(Side::Backend, _) => "backend_error",
            End::Stalled(Side::Client, _) => "client_stalled",
            End::Stalled(Side::Backend, _) => "backend_stalled",
            End::Shutdown => "shutdown",
        }
    }
}

/// The two ends of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client (inner TLS).
    Client = 0,
    /// The backend.
    Backend = 1,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// When a tunnel is closed for lack of traffic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quiet {
    /// No byte either way for this long; `None`: never.
    pub(crate) idle: Option<Duration>,
    /// One direction ended and no byte came for this long.
    pub(crate) half_closed: Duration,
    /// A side that takes none of the bytes waiting for it for this long
    /// ends the tunnel.
    pub(crate) send: Duration,
}

/// What a tunnel carried and why it ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Bytes from the client to the backend.
    pub(crate) to_backend: u64,
    /// Bytes from the backend to the client.
    pub(crate) to_client: u64,
    /// Why it ended.
    pub(crate) end: End,
}

/// Copies between `client` and `backend` until both directions are done, the
/// tunnel is quiet for longer than `quiet` allows, a side takes no byte for
/// `quiet.send`, an error ends it, or
/// `closing` is cancelled (the drain grace period is over). The bytes are
/// added to `bytes` as they pass.
pub(crate) async fn pipe<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    backend: Box<dyn Io>,
    quiet: Quiet,
    bytes: RouteBytes,
    closing: &CancellationToken,
) -> Outcome {
    let activity = Arc::new(Activity::new());
    let mut client = Metered {
        inner: client,
        activity: activity.clone(),
        count: Count::ToBackend,
        total: bytes.to_backend,
    };
    let mut backend = Metered {
        inner: backend,
        activity: activity.clone(),
        count: Count::ToClient,
        total: bytes.to_client,
    };
    let copy = crate::copy::bidirectional(&mut client, &mut backend);
    tokio::pin!(copy);
    let end = loop {
        // The quiet limit in force: the idle timeout, or the half-closed one
        // once a direction has ended (whichever is shorter).
        let half = activity.half_closed.load(Ordering::Relaxed);
        let limit = match (quiet.idle, half) {
            (Some(idle), true) if quiet.half_closed < idle => Some((quiet.half_closed, true)),
            (Some(idle), _) => Some((idle, false)),
            (None, true) => Some((quiet.half_closed, true)),
            (None, false) => None,
        };
        let deadline = limit.map(|(t, _)| activity.last() + t);
        // The side stalled longest, if any: its write deadline. While one is
        // armed, a new stall needs no wake-up: the deadline looks again.
        let stall = activity.stalled_since();
        activity
            .stall_armed
            .store(stall.is_some(), Ordering::Relaxed);
        tokio::select! {
            result = &mut copy => break match result {
                Ok(_) => End::Closed,
                Err(e) => End::Error(activity.failed_side(), e),
            },
            _ = closing.cancelled() => break End::Shutdown,
            // A direction ending changes the limit: look again.
            _ = activity.half_closed_now.notified(), if !half => {}
            // A write started waiting: its deadline may come first.
            _ = activity.stalled_now.notified() => {}
            _ = sleep_until_some(stall.map(|(_, since)| since + quiet.send)) => {
                if let Some((side, since)) = activity.stalled_since() {
                    if since + quiet.send <= Instant::now() {
                        break End::Stalled(side, quiet.send);
                    }
                }
            }
            _ = sleep_until_some(deadline) => {
                if let Some((t, half)) = limit {
                    if activity.last() + t <= Instant::now() {
                        break if half { End::HalfClosed(t) } else { End::Idle(t) };
                    }
                }
            }
        }
    };
    Outcome {
        to_backend: activity.to_backend.load(Ordering::Relaxed),
        to_client: activity.to_client.load(Ordering::Relaxed),
        end,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Byte counts, the time of the last byte, whether a direction has ended and
/// which side failed first, shared by both sides' meters.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    to_backend: AtomicU64,
    to_client: AtomicU64,
    half_closed: AtomicBool,
    half_closed_now: tokio::sync::Notify,
    /// 0: none yet; 1: the client; 2: the backend.
    failed: AtomicU8,
    /// Per side (client, backend): since when (milliseconds after `start`,
    /// plus one) a write to it has been waiting for room; 0: none is.
    stalled: [AtomicU64; 2],
    /// A write started waiting (told only when no stall deadline is armed).
    stalled_now: tokio::sync::Notify,
    /// The pipe sleeps until a stall deadline.
    stall_armed: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            to_backend: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            half_closed: AtomicBool::new(false),
            half_closed_now: tokio::sync::Notify::new(),
            failed: AtomicU8::new(0),
            stalled: [AtomicU64::new(0), AtomicU64::new(0)],
            stalled_now: tokio::sync::Notify::new(),
            stall_armed: AtomicBool::new(false),
        }
    }

    /// Notes whether a write to `side` is waiting for room (`Pending`) or
    /// got through.
    fn writing(&self, side: Side, waiting: bool) {
        let slot = &self.stalled[side as usize];
        if !waiting {
            slot.store(0, Ordering::Relaxed);
        } else if slot.load(Ordering::Relaxed) == 0 {
            slot.store(
                self.start.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
            );
            if !self.stall_armed.load(Ordering::Relaxed) {
                self.stalled_now.notify_one();
            }
        }
    }

    /// The side whose write has waited longest, and since when.
    fn stalled_since(&self) -> Option<(Side, Instant)> {
        [Side::Client, Side::Backend]
            .into_iter()
            .filter_map(
                |side| match self.stalled[side as usize].load(Ordering::Relaxed) {
                    0 => None,
                    ms => Some((side, self.start + Duration::from_millis(ms - 1))),
                },
            )
            .min_by_key(|&(_, since)| since)
    }

    fn fail(&self, side: Side) {
        let code = match side {
            Side::Client => 1,
            Side::Backend => 2,
        };
        let _ = self
            .failed
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The side whose read or write failed first (the backend, unless the
    /// client's did).
    fn failed_side(&self) -> Side {
        match self.failed.load(Ordering::Relaxed) {
            1 => Side::Client,
            _ => Side::Backend,
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy)]
enum Count {
    ToBackend,
    ToClient,
}

/// Counts what is read from the stream it wraps (for the tunnel and in the
/// route's metric), notes the time, an EOF and the first error.
struct Metered<S> {
    inner: S,
    activity: Arc<Activity>,
    count: Count,
    /// The route's counter for this direction.
    total: prometheus_client::metrics::counter::Counter,
}

impl<S> Metered<S> {
    /// The side this stream is.
    fn side(&self) -> Side {
        match self.count {
            Count::ToBackend => Side::Client,
            Count::ToClient => Side::Backend,
        }
    }

    /// Notes whether a write to this side waits for room, then its error if any.
    fn written<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.writing(self.side(), result.is_pending());
        self.noted(result)
    }

    /// Notes an error of this side.
    fn noted<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &result {
            self.activity.fail(self.side());
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let counter = match self.count {
                Count::ToBackend => &self.activity.to_backend,
                Count::ToClient => &self.activity.to_client,
            };
            counter.fetch_add(n, Ordering::Relaxed);
            self.total.inc_by(n);
            self.activity.touch();
        } else if room && matches!(result, Poll::Ready(Ok(()))) {
            // An EOF: this direction is over, the tunnel is half-closed.
            self.activity.touch();
            if !self.activity.half_closed.swap(true, Ordering::Relaxed) {
                self.activity.half_closed_now.notify_one();
            }
        }
        self.noted(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.written(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    #[tokio::test]
    async fn a_client_connection_reads_ahead_while_bytes_flow_and_holds_nothing_when_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = Lingering::new(listener.accept().await.unwrap().0, None);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        // Small asks, as rustls makes them (4 KiB) and a WebSocket header (2 bytes).
        let mut got = vec![0u8; 2];
        conn.read_exact(&mut got).await.unwrap();
        let mut chunk = [0u8; 4096];
        // Past the first bytes, a small ask reads ahead.
        let mut held = false;
        while got.len() < sent.len() {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
            held |= !conn.ahead.is_empty();
        }
        assert!(got == sent, "the bytes arrive intact and in order");
        assert!(held, "bytes were read ahead");
        // The socket is empty: the next read waits, and the buffer is given back.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut one = [0u8; 1];
        let mut read = ReadBuf::new(&mut one);
        assert!(Pin::new(&mut conn)
            .poll_read(&mut cx, &mut read)
            .is_pending());
        assert_eq!(
            conn.ahead.capacity(),
            0,
            "an idle connection holds no buffer"
        );
        // An EOF still reads as one.
        drop(peer);
        assert_eq!(conn.read(&mut chunk).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_takes_no_byte_ends_the_tunnel_at_the_send_timeout() {
        // The client side's buffer fills and is never read; the backend
        // keeps sending, in bursts that also stall and clear on its side.
        let (_client_end, mut client) = duplex(64 * 1024);
        let (backend, mut backend_end) = duplex(64 * 1024);
        let sender = tokio::spawn(async move {
            let chunk = [7u8; 4096];
            while backend_end.write_all(&chunk).await.is_ok() {}
        });
        let quiet = Quiet {
            idle: None,
            half_closed: Duration::from_secs(300),
            send: Duration::from_secs(5),
        };
        let started = Instant::now();
        let outcome = pipe(
            &mut client,
            Box::new(backend),
            quiet,
            RouteBytes::default(),
            &CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(outcome.end, End::Stalled(Side::Client, t) if t == quiet.send),
            "{}",
            outcome.end
        );
        assert_eq!(outcome.end.reason(), "client_stalled");
        assert!(
            started.elapsed() >= quiet.send,
            "not before the send timeout"
        );
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let (mut client_end, mut client) = duplex(1024);
        let (backend, mut backend_end) = duplex(64 * 1024);
        // 64 KiB to carry; the client reads 100 bytes a second: each write
        // waits, but never for the send timeout.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 100];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match client_end.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        backend_end.write_all(&[1u8; 64 * 1024]).await.unwrap();
        backend_end.shutdown().await.unwrap();
        let quiet = Quiet {
            idle: None,
            half_closed: Duration::from_secs(3600),
            send: Duration::from_secs(5),
        };
        let outcome = pipe(
            &mut client,
            Box::new(backend),
            quiet,
            RouteBytes::default(),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(outcome.to_client, 64 * 1024, "{}", outcome.end);
        drop(client);
        drop(backend_end);
        assert_eq!(reader.await.unwrap(), 64 * 1024);
    }
}
