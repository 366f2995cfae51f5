//! `alpn-ping` framing: both directions are frames `u32 length (big-endian) ||
//! payload`; a frame of length 0 is a ping, discarded by the reader. Payloads
//! stream through in both directions: neither side ever holds a whole frame.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{poll_fill, poll_read_limited, poll_write_frame, Pinger, Role};

/// The largest frame written; readers accept any length.
/// 128 KiB: the four TLS records of a 64 KiB copy (16,406 bytes each with
/// their headers) fit one frame, and so one write.
const MAX_FRAME: usize = 128 * 1024;

/// A stream framed as `alpn-ping`.
pub struct AlpnPingStream<S> {
    inner: S,
    /// Read side: the frame header being read and how much of it is in.
    read_header: [u8; 4],
    read_header_len: usize,
    /// Payload bytes left in the frame being read.
    read_remaining: u64,
    /// Write side: the header being written (a data frame's, or a ping).
    write_header: [u8; 4],
    write_header_pos: usize,
    /// Payload bytes the current header promised and that are not yet written.
    write_remaining: usize,
    /// A ping is due and goes out at the next frame boundary.
    ping_pending: bool,
    pinger: Pinger,
}

impl<S> AlpnPingStream<S> {
    /// Frames `inner` as the server, sending a ping every `ping_interval` if given.
    pub fn new(inner: S, ping_interval: Option<Duration>) -> AlpnPingStream<S> {
        AlpnPingStream::for_role(inner, Role::Server, ping_interval)
    }

    /// Frames `inner` for `role`: a server pings every `ping_interval`, a
    /// client after `ping_interval` with no payload sent.
    pub fn for_role(inner: S, role: Role, ping_interval: Option<Duration>) -> AlpnPingStream<S> {
        AlpnPingStream {
            inner,
            read_header: [0; 4],
            read_header_len: 0,
            read_remaining: 0,
            write_header: [0; 4],
            write_header_pos: 4,
            write_remaining: 0,
            ping_pending: false,
            pinger: Pinger::for_role(role, ping_interval),
        }
    }
}

impl<S: AsyncWrite + Unpin> AlpnPingStream<S> {
    /// Writes out the header in progress; `Ready(Ok)` once none is.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write_header_pos < 4 {
            let n = ready!(Pin::new(&mut self.inner)
                .poll_write(cx, &self.write_header[self.write_header_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_header_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// At a frame boundary, starts a due ping and pushes it out as far as possible.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_remaining == 0 && self.write_header_pos == 4 && self.ping_pending {
            self.ping_pending = false;
            self.write_header = [0; 4];
            self.write_header_pos = 0;
        }
        if self.write_remaining == 0 {
            ready!(self.poll_header(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AlpnPingStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pinger.poll_due(cx) {
            this.ping_pending = true;
        }
        // Pushing a ping out must not hold up reading: a full send buffer only
        // delays the ping until the next read or write.
        if let Poll::Ready(Err(e)) = this.poll_ping(cx) {
            return Poll::Ready(Err(e));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.read_remaining > 0 {
                let max = usize::try_from(this.read_remaining).unwrap_or(usize::MAX);
                let n = ready!(poll_read_limited(&mut this.inner, cx, buf, max))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tunnel closed inside an alpn-ping frame",
                    )));
                }
                this.read_remaining -= n as u64;
                return Poll::Ready(Ok(()));
            }
            if !ready!(poll_fill(
                &mut this.inner,
                cx,
                &mut this.read_header,
                &mut this.read_header_len
            ))? {
                return Poll::Ready(Ok(()));
            }
            this.read_header_len = 0;
            this.read_remaining = u64::from(u32::from_be_bytes(this.read_header));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AlpnPingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// A frame's header goes out in the same write as its payload, and the
    /// several TLS records rustls hands over at once travel in one frame (up
    /// to [`MAX_FRAME`]): a frame costs one system call, not two per record.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_ping(cx))?;
        if this.write_remaining == 0 {
            let len = total.min(MAX_FRAME);
            this.write_header = (len as u32).to_be_bytes();
            this.write_header_pos = 0;
            this.write_remaining = len;
        }
        loop {
            let header = &this.write_header[this.write_header_pos..];
            let len = total.min(this.write_remaining);
            let n = ready!(poll_write_frame(&mut this.inner, cx, header, bufs, len))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let header_part = n.min(4 - this.write_header_pos);
            this.write_header_pos += header_part;
            let payload = n - header_part;
            if payload == 0 {
                // Only (part of) the header went out: on with the rest.
                continue;
            }
            this.write_remaining -= payload;
            this.pinger.sent();
            return Poll::Ready(Ok(payload));
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ping(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ping(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn frames_are_length_prefixed_and_pings_skipped() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut framed = AlpnPingStream::new(a, None);
        framed.write_all(b"hello").await.unwrap();
        framed.flush().await.unwrap();
        let mut wire = [0u8; 9];
        b.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire, b"\0\0\0\x05hello");

        b.write_all(b"\0\0\0\0\0\0\0\x03abc\0\0\0\0\0\0\0\x02de")
            .await
            .unwrap();
        drop(b);
        let mut got = Vec::new();
        framed.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcde");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_an_eof() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut framed = AlpnPingStream::new(a, None);
        b.write_all(b"\0\0\0\x09abc").await.unwrap();
        drop(b);
        let mut got = Vec::new();
        let err = framed.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_is_pinged() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut framed = AlpnPingStream::new(a, Some(Duration::from_secs(30)));
        let reader = tokio::spawn(async move {
            let mut sink = [0u8; 16];
            framed.read(&mut sink).await
        });
        let mut ping = [0xffu8; 8];
        tokio::time::sleep(Duration::from_secs(61)).await;
        b.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping, [0; 8], "two pings after 61 s");
        reader.abort();
    }
}
