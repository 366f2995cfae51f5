//! Pre-opened tunnels (PROTOCOL.md section 5): a client may upgrade ahead of
//! need and send its inner ClientHello later. An upgraded connection waits for
//! its first inner byte up to `limits.preopen_timeout` (longer than the
//! handshake deadline, which runs from that byte), pinged by its framing
//! meanwhile and holding its place under the connection cap. [`first_byte`]
//! is that wait; [`Primed`] hands the byte it read on to the inner TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use alpn_protocol::framing::{Ending, Finish};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How the wait for the first inner byte ended.
#[derive(Debug)]
pub(crate) enum Waited {
    /// The first byte arrived: the inner handshake starts.
    Byte(u8),
    /// The client ended the connection first (a pool giving a tunnel back).
    Closed,
    /// Reading failed.
    Failed(io::Error),
    /// No byte within the wait.
    Expired,
    /// The router began to shut down.
    Stopping,
}

impl Waited {
    /// The `reason` label of `alpn_router_preopen_ended`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Waited::Byte(_) => "byte",
            Waited::Closed => "closed",
            Waited::Failed(_) => "error",
            Waited::Expired => "expired",
            Waited::Stopping => "shutdown",
        }
    }

    /// How the outer connection ends after a wait that got no byte: a
    /// WebSocket tunnel with Close 1000 (1001 when the router is going away),
    /// the others with a close at once, so that the client's pool notices and
    /// opens another. `websocket` says whether the framing is WebSocket.
    pub(crate) fn ending(&self, websocket: bool) -> Ending {
        match self {
            Waited::Closed => Ending::Clean,
            Waited::Stopping if websocket => Ending::GoingAway,
            Waited::Expired if websocket => Ending::Clean,
            _ => Ending::Failed,
        }
    }
}

/// Waits up to `wait` for the first inner byte of `stream` (reading it pings
/// the peer and answers its pings as the framing says), or until `stopping`.
pub(crate) async fn first_byte<S: AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
    stopping: &CancellationToken,
) -> Waited {
    let mut byte = [0u8; 1];
    tokio::select! {
        () = stopping.cancelled() => Waited::Stopping,
        read = tokio::time::timeout(wait, stream.read(&mut byte)) => match read {
            Err(_) => Waited::Expired,
            Ok(Ok(0)) => Waited::Closed,
            Ok(Ok(_)) => Waited::Byte(byte[0]),
            Ok(Err(e)) => Waited::Failed(e),
        },
    }
}

/// A stream whose first byte was read by [`first_byte`]: reads return it first.
pub(crate) struct Primed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S> Primed<S> {
    /// `first` is returned before anything from `inner`.
    pub(crate) fn new(inner: S, first: u8) -> Primed<S> {
        Primed {
            first: Some(first),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Primed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0 {
            if let Some(b) = this.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Primed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Finish> Finish for Primed<S> {
    async fn finish(&mut self, ending: Ending, deadline: Duration) {
        self.inner.finish(ending, deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_byte_read_while_waiting_comes_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"hello").await.unwrap();
        let mut b = b;
        let stop = CancellationToken::new();
        let Waited::Byte(first) = first_byte(&mut b, Duration::from_secs(60), &stop).await else {
            panic!("no first byte");
        };
        let mut primed = Primed::new(b, first);
        let mut got = [0u8; 5];
        primed.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_its_deadline_or_at_shutdown() {
        let (_a, mut b) = tokio::io::duplex(64);
        let stop = CancellationToken::new();
        let waited = first_byte(&mut b, Duration::from_secs(300), &stop).await;
        assert!(matches!(waited, Waited::Expired), "{waited:?}");
        stop.cancel();
        let waited = first_byte(&mut b, Duration::from_secs(300), &stop).await;
        assert!(matches!(waited, Waited::Stopping), "{waited:?}");
    }
}
