//! How the client ends a tunnel: once its inner TLS is over both ways
//! (`close_notify` sent and received), it runs the closing handshake of the
//! framing (PROTOCOL.md section 4: a WebSocket Close and the peer's, or FIN
//! and the peer's EOF) for at most [`CLOSE_DEADLINE`], reading and
//! discarding what still comes, before its socket closes. Closing with a
//! late ping, Pong or Close of the router unread would make the kernel send a
//! reset, which throws away what the client sent that has not left its socket
//! yet: the end of its data, lost although every write succeeded.
//!
//! [`Tunnel`] does this by itself, for every user of the library: the
//! handshake runs inside the stream's shutdown when the router's
//! `close_notify` came first, and inside the read that sees the router's
//! `close_notify` when the client shut down first. Either way, a caller that
//! shuts its tunnel down and reads it to the end (as `copy_bidirectional`
//! does) has closed it properly when both are done.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use alpn_protocol::framing::{Framed, Io};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The longest the client waits for the router's end of the closing
/// handshake; then it closes anyway (the router's own deadline, its
/// `close_timeout`, is 30 s by default).
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// What carries the inner TLS: TCP to the router's direct port, or an
/// upgraded connection in its framing.
pub(crate) enum Carrier {
    Direct(TcpStream),
    Upgraded(Framed<Box<dyn Io>>),
    /// Not there yet: the inner TLS was begun before the upgrade was
    /// answered (its ClientHello sent behind the request), and is not driven
    /// until the answer puts the upgraded connection here. Any I/O on it is
    /// an error.
    Pending,
}

impl Carrier {
    /// The end of the carrier once the inner TLS is over both ways. Direct:
    /// FIN (already sent behind our `close_notify`), then the router's EOF.
    /// Upgraded: [`Framed::poll_close`].
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Carrier::Direct(tcp) => {
                ready!(Pin::new(&mut *tcp).poll_shutdown(cx))?;
                let mut scratch = [0u8; 4096];
                loop {
                    let mut buf = ReadBuf::new(&mut scratch);
                    ready!(Pin::new(&mut *tcp).poll_read(cx, &mut buf))?;
                    if buf.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            Carrier::Upgraded(framed) => framed.poll_close(cx),
            Carrier::Pending => Poll::Ready(Ok(())),
        }
    }
}

/// The error of I/O on [`Carrier::Pending`].
fn pending() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the inner TLS was driven before the upgrade was answered",
    )
}

macro_rules! carrier {
    ($c:expr, $s:ident => $e:expr) => {
        match $c {
            Carrier::Direct($s) => $e,
            Carrier::Upgraded($s) => $e,
            Carrier::Pending => Poll::Ready(Err(pending())),
        }
    };
}

impl AsyncRead for Carrier {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        carrier!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Carrier {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        carrier!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        carrier!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Carrier::Direct(s) => s.is_write_vectored(),
            Carrier::Upgraded(s) => s.is_write_vectored(),
            Carrier::Pending => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        carrier!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        carrier!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The inner TLS stream of a tunnel.
pub(crate) type InnerTls = tokio_rustls::client::TlsStream<Carrier>;

/// Where the closing handshake is.
enum Close {
    /// Not begun: one direction at least is still open.
    Open,
    /// Running, until the router's end or the deadline.
    Running(Pin<Box<Sleep>>),
    /// Over (done, failed or timed out): the socket may close.
    Over,
}

/// An open tunnel: the inner TLS stream, which ends with the closing
/// handshake (see the module's documentation).
pub(crate) struct Tunnel {
    tls: InnerTls,
    /// The router's `close_notify` was read.
    read_over: bool,
    /// Our `close_notify` is out.
    write_over: bool,
    close: Close,
}

impl Tunnel {
    pub(crate) fn new(tls: InnerTls) -> Tunnel {
        Tunnel {
            tls,
            read_over: false,
            write_over: false,
            close: Close::Open,
        }
    }

    /// Runs the closing handshake once both directions are over; `Ready` when
    /// it is over (or there is none to run yet).
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !(self.read_over && self.write_over) {
            return Poll::Ready(());
        }
        loop {
            match &mut self.close {
                Close::Over => return Poll::Ready(()),
                Close::Open => {
                    self.close = Close::Running(Box::pin(tokio::time::sleep(CLOSE_DEADLINE)));
                }
                Close::Running(deadline) => {
                    let carrier = self.tls.get_mut().0;
                    let outcome = match carrier.poll_close(cx) {
                        Poll::Ready(Ok(())) => None,
                        Poll::Ready(Err(e)) => Some(format!("it failed: {e}")),
                        Poll::Pending => match deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => Some(format!(
                                "the router did not end its side within {CLOSE_DEADLINE:?}"
                            )),
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    let how = match self.tls.get_ref().0 {
                        Carrier::Direct(_) => "direct TLS",
                        Carrier::Upgraded(f) => f.framing().name(),
                        Carrier::Pending => "never connected",
                    };
                    match outcome {
                        None => log::debug!("tunnel closed ({how}): closing handshake complete"),
                        Some(why) => log::warn!(
                            "tunnel closed ({how}) without the router's end of the closing handshake: {why}; all data had been exchanged (close_notify both ways)"
                        ),
                    }
                    self.close = Close::Over;
                }
            }
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_over {
            let room = buf.remaining() > 0;
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.tls).poll_read(cx, buf))?;
            if !room || buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // close_notify: the router's side is over.
            this.read_over = true;
        }
        ready!(this.poll_closed(cx));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_over {
            ready!(Pin::new(&mut this.tls).poll_shutdown(cx))?;
            this.write_over = true;
        }
        ready!(this.poll_closed(cx));
        Poll::Ready(Ok(()))
    }
}
