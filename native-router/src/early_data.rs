//! The inner TLS of a route that takes TLS 1.3 early data (`early_data = true`,
//! PROTOCOL.md section 5): a client that resumes a session sends its first
//! bytes with the ClientHello (0-RTT), and the tunnel starts before the
//! client's `Finished` arrives. The backend is dialled at once, those bytes go
//! to it, and its answer goes back right behind the server's handshake flight
//! (0.5-RTT data), so a pre-opened tunnel is set up in one round trip.
//!
//! Replays: the route keeps its sessions in memory and each can be resumed
//! once ([`rustls::server::ServerSessionMemoryCache`] is taken from, not
//! read), so a replayed ClientHello finds no session, gets a full handshake it
//! cannot finish, and its early data is dropped unread.
//!
//! tokio-rustls's server stream finishes the whole handshake before it gives
//! the stream out, so this is a small stream of its own over a
//! [`ServerConnection`]: early data first, then the ordinary records. A full
//! handshake (no session, or a session from before a reload or from another
//! replica) is finished here before the stream is given out, as tokio-rustls
//! does.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::server::ServerConnection;
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most early data a route takes from one ClientHello: the client sends
/// what its application has written by then, up to this.
pub(crate) const MAX_EARLY_DATA: u32 = 16 * 1024;

/// Sessions a route keeps for resumption with early data; the oldest go
/// first, and a client whose session went resumes no more (a full handshake).
/// Each is a few hundred bytes (more with a client certificate chain).
pub(crate) const SESSIONS: usize = 4096;

/// A server TLS connection over `S` that may be given out mid-handshake.
pub(crate) struct EarlyTls<S> {
    io: S,
    conn: ServerConnection,
    /// The transport gave end-of-file.
    eof: bool,
    /// A read error that came after some bytes, for the next read.
    error: Option<io::Error>,
}

/// `io` as `std::io`, `WouldBlock` for `Pending`.
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        pending_as_would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        pending_as_would_block(Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        pending_as_would_block(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

fn pending_as_would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

fn would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> EarlyTls<S> {
    /// Takes over `conn` (the ClientHello processed) on `io`: sends the
    /// server's flight, and returns once the client can be answered: at once
    /// for a resumed session (its early data, if any, is read from the
    /// stream), after the client's `Finished` for a full handshake.
    pub(crate) async fn start(io: S, mut conn: ServerConnection) -> io::Result<EarlyTls<S>> {
        // Records that came in the ClientHello's read (early data) are
        // buffered but not yet processed.
        let processed = conn.process_new_packets().map(|_| ());
        let mut tls = EarlyTls {
            io,
            conn,
            eof: false,
            error: None,
        };
        if let Err(e) = processed {
            return Err(tls.failed(e).await);
        }
        poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }

    /// The connection, for what the handshake established.
    pub(crate) fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// Whether the client's early data was accepted (it may still be on its way).
    pub(crate) fn early_data_accepted(&mut self) -> bool {
        self.conn.early_data().is_some()
    }

    /// Sends the alert rustls queued for `error`, as far as the transport
    /// takes it now, and returns the error.
    async fn failed(&mut self, error: rustls::Error) -> io::Error {
        let _ = poll_fn(|cx| match self.poll_write_tls(cx) {
            Poll::Pending => Poll::Ready(Ok(())),
            done => done,
        })
        .await;
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_tls(cx))?;
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            let resumed = self.conn.handshake_kind() == Some(HandshakeKind::Resumed);
            if !self.conn.is_handshaking() || resumed {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the handshake",
                )));
            }
            ready!(self.poll_read_tls(cx))?;
        }
    }

    /// Writes what rustls has to send until it has nothing or the transport
    /// would block.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            if ready!(would_block(self.conn.write_tls(&mut io)))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads once from the transport and processes what came; an error that
    /// rustls answers with an alert sends it (as far as it goes now).
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        if ready!(would_block(self.conn.read_tls(&mut io)))? == 0 {
            self.eof = true;
        }
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.poll_write_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `bufs` to rustls and as much as the transport takes; like
    /// tokio-rustls, ready once rustls holds some of it.
    fn poll_write_some(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let taken = self.conn.writer().write_vectored(bufs)?;
        match self.poll_write_tls(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if taken == 0 => Poll::Pending,
            Poll::Ready(Ok(())) if taken == 0 && bufs.iter().any(|b| !b.is_empty()) => {
                // rustls's buffer was full and is now empty.
                Poll::Ready(self.conn.writer().write_vectored(bufs))
            }
            _ => Poll::Ready(Ok(taken)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for EarlyTls<S> {
    /// Fills `buf` with what has come in, as tokio-rustls does: one record
    /// at least (waiting for it), then more while more is there without
    /// waiting, so that a copy moves as much per write as its buffer holds.
    /// An error after some bytes is kept for the next call.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        ready!(this.poll_read_some(cx, buf))?;
        while buf.remaining() > 0 {
            let had = buf.filled().len();
            match this.poll_read_some(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > had => {}
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    if buf.filled().len() == before {
                        return Poll::Ready(Err(e));
                    }
                    this.error = Some(e);
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> EarlyTls<S> {
    /// Reads what one record (or the early data) holds into `buf`, waiting
    /// for it; nothing at the end.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        loop {
            let out = buf.initialize_unfilled();
            // Early data comes before any other record's data.
            if let Some(mut early) = this.conn.early_data() {
                let n = early.read(out)?;
                if n > 0 {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
            }
            match this.conn.reader().read(out) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // What the handshake still has to send (tickets after the
            // client's Finished) goes when it can; reading goes on.
            if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                return Poll::Ready(Err(e));
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for EarlyTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_some(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_some(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Idempotent in rustls: a second call queues nothing.
        this.conn.send_close_notify();
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
