//! A test stream that records what is written and counts the writes (how
//! many system calls a framing would make).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An inner stream that keeps what is written and counts the writes; its
/// clones share them, so a test can look while a framing owns the stream.
#[derive(Default, Clone)]
pub(crate) struct CountingWire {
    seen: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl CountingWire {
    /// Every byte written so far.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().0.clone()
    }

    /// How many writes there were.
    pub(crate) fn writes(&self) -> usize {
        self.seen.lock().unwrap().1
    }
}

impl AsyncRead for CountingWire {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for CountingWire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut seen = self.seen.lock().unwrap();
        seen.1 += 1;
        let before = seen.0.len();
        for b in bufs {
            seen.0.extend_from_slice(b);
        }
        Poll::Ready(Ok(seen.0.len() - before))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
