//! Both directions of a tunnel, copied until each has ended (EOF becomes a
//! write shutdown on the other side). Like tokio's `copy_bidirectional`, with
//! one difference that matters for a router holding many quiet tunnels: each
//! direction holds its buffer only while bytes flow. The buffer is taken when a
//! read is due and given back as soon as the reader has nothing more and all was
//! written and flushed, so an idle tunnel holds no copy buffer at all, and a
//! busy one can use large buffers: 64 KiB, four full TLS records per write,
//! which rustls encrypts and sends with one system call (bench/discussion.md:
//! 11% less CPU per GiB than one 16 KiB record per write, with the client
//! connection's read-ahead, at 64 tunnels).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer size while bytes flow: four times the largest TLS record's plaintext.
pub(crate) const BUFFER: usize = 64 * 1024;

/// One direction's state.
#[derive(Debug, Default)]
struct Direction {
    /// Present only while there is something to carry.
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    shut_down: bool,
    amt: u64,
    /// The error that ended this direction came from the writer.
    write_failed: bool,
    /// The other direction could not write to the side this one reads from:
    /// its EOF is the end of a failed side, not passed on as a shutdown.
    reader_failed: bool,
}

impl Direction {
    /// Copies from `reader` to `writer` until EOF (then shuts `writer` down);
    /// `Ready` with the byte count once done.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.shut_down {
                return Poll::Ready(Ok(self.amt));
            }
            // Write out what was read.
            while self.pos < self.cap {
                let buf = self.buf.as_deref().expect("bytes are held in a buffer");
                let n = match ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap])) {
                    Ok(n) => n,
                    Err(e) => return self.write_error(e),
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.amt += n as u64;
                self.need_flush = true;
            }
            if self.read_done && self.reader_failed {
                if let Err(e) = ready!(writer.as_mut().poll_flush(cx)) {
                    return self.write_error(e);
                }
                self.buf = None;
                return Poll::Ready(Ok(self.amt));
            }
            if self.read_done {
                if let Err(e) = ready!(writer.as_mut().poll_shutdown(cx)) {
                    return self.write_error(e);
                }
                self.shut_down = true;
                self.buf = None;
                continue;
            }
            // Read more into the (possibly new) buffer.
            let buf = self
                .buf
                .get_or_insert_with(|| vec![0; BUFFER].into_boxed_slice());
            let mut read = ReadBuf::new(buf);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    self.pos = 0;
                    self.cap = n;
                    self.read_done = n == 0;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: flush what was written, then give the
                    // buffer back until bytes come again.
                    if self.need_flush {
                        if let Err(e) = ready!(writer.as_mut().poll_flush(cx)) {
                            return self.write_error(e);
                        }
                        self.need_flush = false;
                    }
                    self.buf = None;
                    return Poll::Pending;
                }
            }
        }
    }

    fn write_error(&mut self, e: io::Error) -> Poll<io::Result<u64>> {
        self.write_failed = true;
        Poll::Ready(Err(e))
    }

    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended; returns
/// the bytes carried each way (a to b, b to a). An error in either direction
/// ends both, with one exception: when a write fails (the side written to
/// reset), the other direction, which reads from that side, is carried on to
/// its end, so that what the side sent before its reset still arrives (the
/// kernel keeps it readable ahead of the reset); its EOF is then not passed
/// on as a shutdown (the side failed: no clean end), and the first error is
/// returned.
pub(crate) async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    let (mut done_ab, mut done_ba) = (None, None);
    let (mut over_ab, mut over_ba) = (false, false);
    // The first error, and whether a writer reported it.
    let mut failed: Option<(io::Error, bool)> = None;
    poll_fn(|cx| {
        if !over_ab {
            if let Poll::Ready(r) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                over_ab = true;
                match r {
                    Ok(n) => done_ab = Some(n),
                    Err(e) => {
                        b_to_a.reader_failed = a_to_b.write_failed;
                        failed.get_or_insert((e, a_to_b.write_failed));
                    }
                }
            }
        }
        if !over_ba {
            if let Poll::Ready(r) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                over_ba = true;
                match r {
                    Ok(n) => done_ba = Some(n),
                    Err(e) => {
                        a_to_b.reader_failed = b_to_a.write_failed;
                        failed.get_or_insert((e, b_to_a.write_failed));
                    }
                }
            }
        }
        if let Some((_, write_failed)) = &failed {
            if *write_failed && !(over_ab && over_ba) {
                return Poll::Pending; // The other direction reads on.
            }
            let (e, _) = failed.take().expect("checked above");
            return Poll::Ready(Err(e));
        }
        match (done_ab, done_ba) {
            (Some(ab), Some(ba)) => Poll::Ready(Ok((ab, ba))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn carries_both_ways_and_propagates_each_eof() {
        // client <-> (a | copy | b) <-> server
        let (mut client, mut a) = duplex(4096);
        let (mut b, mut server) = duplex(4096);
        let copy = tokio::spawn(async move { bidirectional(&mut a, &mut b).await });
        let up: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let down: Vec<u8> = (0..70_000u32).map(|i| (i * 13) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let send = async {
                wr.write_all(&up2).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = rd.read_to_end(&mut got);
            let (_, r) = tokio::join!(send, recv);
            r.unwrap();
            got
        });
        // The server reads everything (up to the client's EOF) before it answers:
        // a half-closed tunnel still carries the other direction.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up);
        server.write_all(&down2).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), down);
        let (ab, ba) = copy.await.unwrap().unwrap();
        assert_eq!((ab, ba), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn a_quiet_direction_holds_no_buffer() {
        let (mut client, mut a) = duplex(64 * 1024);
        let (mut b, mut server) = duplex(64 * 1024);
        let mut d = Direction::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(d
            .poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
            .is_pending());
        assert!(!d.holds_buffer(), "nothing read yet");
        client.write_all(b"hello").await.unwrap();
        assert!(d
            .poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
            .is_pending());
        assert!(!d.holds_buffer(), "all carried: the buffer is given back");
        let mut five = [0u8; 5];
        server.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello");
        drop(client);
        assert!(matches!(
            d.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b)),
            Poll::Ready(Ok(5))
        ));
    }

    #[tokio::test]
    async fn a_write_error_ends_the_copy() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, server) = duplex(1024);
        drop(server);
        client.write_all(b"to nowhere").await.unwrap();
        assert!(bidirectional(&mut a, &mut b).await.is_err());
    }

    #[tokio::test]
    async fn after_a_failed_write_what_that_side_sent_still_arrives() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        // The server's last words, then it is gone: writes to it fail.
        server.write_all(b"last words").await.unwrap();
        drop(server);
        client.write_all(b"to nowhere").await.unwrap();
        assert!(bidirectional(&mut a, &mut b).await.is_err());
        let mut got = [0u8; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"last words");
        // The failed side's EOF is not passed on: no clean end was seen.
        let mut more = [0u8; 1];
        // (A zero timeout polls the read once: an EOF would be there at once.)
        let read = tokio::time::timeout(std::time::Duration::ZERO, client.read(&mut more)).await;
        assert!(
            read.is_err(),
            "no EOF while the copy's side is open: {read:?}"
        );
    }
}
