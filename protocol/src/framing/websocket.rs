//! `websocket` framing (RFC 6455) after the handshake: the tunnel's bytes travel
//! as binary messages, client frames masked and server frames not. Payloads stream
//! through in both directions (no side ever holds a whole data frame); fragmented
//! messages are reassembled simply by reading on, Pings are answered with Pongs, a
//! Close ends the stream and is answered with Close, and a text frame or any other
//! protocol error closes the stream with 1003 or 1002 and fails the read.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{poll_fill, poll_read_limited, poll_write_frame, Pinger, Role};

pub(crate) use crate::websocket::{
    apply_mask, close_code_allowed, encode_header, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED_DATA, FIN, MASKED,
    MAX_CONTROL, MAX_HEADER, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

/// The largest payload of a data frame written; readers accept up to 2^63 - 1.
/// 128 KiB: the four TLS records of a 64 KiB copy (16,406 bytes each with
/// their headers) fit one frame, and so one write.
const MAX_FRAME: usize = 128 * 1024;
/// How much of the caller's bytes a client masks per write (at most one frame):
/// two TLS records and a little more.
const SCRATCH: usize = 32 * 1024;
/// A stream framed as WebSocket binary messages.
pub struct WebSocketStream<S> {
    inner: S,
    /// Decides who masks: clients mask what they send, servers require it.
    role: Role,
    /// Read side: where the reader is between and inside frames.
    read_state: ReadState,
    /// The frame header being read and how much of it is in.
    read_header: [u8; MAX_HEADER],
    read_header_len: usize,
    /// The mask key of the frame being read, and how far into it the payload is.
    read_mask: Option<[u8; 4]>,
    read_mask_pos: usize,
    /// A fragmented message is unfinished: only continuations may follow.
    in_message: bool,
    /// Write side: the header of the data frame being written.
    write_header: [u8; MAX_HEADER],
    write_header_len: usize,
    write_header_pos: usize,
    /// Payload bytes the current data header promised and that are not yet written.
    write_remaining: usize,
    /// The mask key of the data frame being written, and how far into it the payload is.
    write_mask: [u8; 4],
    write_mask_pos: usize,
    /// Where a client masks the caller's bytes, which it may not modify (empty for a server).
    scratch: Box<[u8]>,
    /// Control frame payloads and the control frame being written, on the heap
    /// to keep the stream (and the enum holding it) small.
    bufs: Box<ControlBufs>,
    /// The length of the control frame in `bufs.out` and how much of it is out.
    control_len: usize,
    control_pos: usize,
    /// Control bytes went to `inner` and have not been flushed yet.
    control_unflushed: bool,
    /// A Pong answering the latest Ping (its payload in `bufs.pong`), waiting
    /// for a write frame boundary; the payload length.
    pong: Option<usize>,
    /// A ping is due and goes out at the next write frame boundary.
    ping_pending: bool,
    /// Whether our Close is queued or out: nothing is sent after it.
    close: CloseState,
    pinger: Pinger,
}

/// Where the reader is.
#[derive(Clone, Copy)]
enum ReadState {
    /// Between frames, or inside a header (`read_header_len` bytes of it in).
    Header,
    /// Streaming a data frame's payload: this many bytes are left.
    Data { remaining: u64 },
    /// Collecting a control frame's `len`-byte payload into `bufs.received`.
    Control {
        opcode: u8,
        len: usize,
        filled: usize,
    },
    /// A Close arrived or the tunnel ended between frames: reads give EOF.
    Closed,
    /// A protocol error was reported: the stream cannot be read any more.
    Failed,
}

/// Our side of the closing handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CloseState {
    /// No Close sent.
    Open,
    /// A Close with this status code (or none) goes out at the next write frame boundary.
    Queued(Option<u16>),
    /// The Close is written or being written.
    Sent,
}

/// Control frames are at most 125 bytes of payload, so they are held whole.
struct ControlBufs {
    /// The payload of the control frame being read.
    received: [u8; MAX_CONTROL],
    /// The payload of the Pong to send.
    pong: [u8; MAX_CONTROL],
    /// The control frame being written, header included.
    out: [u8; MAX_HEADER + MAX_CONTROL],
}

impl<S> WebSocketStream<S> {
    /// Frames `inner` (whose handshake is done) for `role`, pinging if
    /// `ping_interval` is given: a server every interval, a client after an
    /// interval with no data sent. Must be called inside a tokio runtime.
    pub fn new(inner: S, role: Role, ping_interval: Option<Duration>) -> WebSocketStream<S> {
        let scratch = match role {
            Role::Client => vec![0; MAX_HEADER + SCRATCH].into_boxed_slice(),
            Role::Server => Box::default(),
        };
        WebSocketStream {
            inner,
            role,
            read_state: ReadState::Header,
            read_header: [0; MAX_HEADER],
            read_header_len: 0,
            read_mask: None,
            read_mask_pos: 0,
            in_message: false,
            write_header: [0; MAX_HEADER],
            write_header_len: 0,
            write_header_pos: 0,
            write_remaining: 0,
            write_mask: [0; 4],
            write_mask_pos: 0,
            scratch,
            bufs: Box::new(ControlBufs {
                received: [0; MAX_CONTROL],
                pong: [0; MAX_CONTROL],
                out: [0; MAX_HEADER + MAX_CONTROL],
            }),
            control_len: 0,
            control_pos: 0,
            control_unflushed: false,
            pong: None,
            ping_pending: false,
            close: CloseState::Open,
            pinger: Pinger::for_role(role, ping_interval),
        }
    }

    /// Queues our Close with `code`, sent at the next write frame boundary
    /// (a flush pushes it out); nothing is sent after it. No-op once closing.
    pub fn queue_close(&mut self, code: u16) {
        if self.close == CloseState::Open {
            self.close = CloseState::Queued(Some(code));
        }
    }

    /// Whether no data frame is half written, so a control frame may go out.
    fn at_write_boundary(&self) -> bool {
        self.write_header_pos == self.write_header_len && self.write_remaining == 0
    }

    /// A fresh mask key for a client frame; none for a server.
    fn new_mask(&self) -> io::Result<Option<[u8; 4]>> {
        match self.role {
            Role::Client => {
                let mut key = [0; 4];
                getrandom::fill(&mut key).map_err(|e| {
                    io::Error::other(format!("no randomness for a WebSocket mask: {e}"))
                })?;
                Ok(Some(key))
            }
            Role::Server => Ok(None),
        }
    }

    /// Lays out a whole control frame in `bufs.out`, masked for a client.
    fn start_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = self.new_mask()?;
        let header_len =
            encode_header(&mut self.bufs.out, FIN | opcode, payload.len() as u64, mask);
        let body = &mut self.bufs.out[header_len..header_len + payload.len()];
        body.copy_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(body, key, 0);
        }
        self.control_len = header_len + payload.len();
        self.control_pos = 0;
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> WebSocketStream<S> {
    /// At a write frame boundary, writes out the control frames that are due (the
    /// one in progress, a Pong, a Ping, then our Close); `Ready(Ok)` once none is
    /// left or a data frame is half written.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.at_write_boundary() {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.control_pos < self.control_len {
                let n = ready!(Pin::new(&mut self.inner)
                    .poll_write(cx, &self.bufs.out[self.control_pos..self.control_len]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.control_pos += n;
                self.control_unflushed = true;
            }
            if self.close != CloseState::Open {
                // Nothing but the Close itself goes out once the stream is closing.
                self.pong = None;
                self.ping_pending = false;
            }
            if let Some(len) = self.pong.take() {
                let payload = self.bufs.pong;
                self.start_control(OP_PONG, &payload[..len])?;
            } else if self.ping_pending {
                self.ping_pending = false;
                self.start_control(OP_PING, &[])?;
            } else if let CloseState::Queued(code) = self.close {
                self.close = CloseState::Sent;
                match code {
                    Some(code) => self.start_control(OP_CLOSE, &code.to_be_bytes())?,
                    None => self.start_control(OP_CLOSE, &[])?,
                }
            } else {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// [`Self::poll_control`], then a flush if that wrote anything, so that a
    /// control frame sent from `poll_read` does not sit in a buffer.
    fn poll_control_flushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_control(cx))?;
        if self.control_unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.control_unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reports a protocol error: queues a Close with `code`, pushes it out as far
    /// as the inner stream takes it now, and returns the error for `poll_read`.
    fn fail(&mut self, cx: &mut Context<'_>, code: u16, message: &str) -> io::Error {
        log::debug!("websocket protocol error ({code}): {message}");
        self.read_state = ReadState::Failed;
        if self.close == CloseState::Open {
            self.close = CloseState::Queued(Some(code));
        }
        // Best effort: the error is reported whether or not the Close got out.
        let _ = self.poll_control_flushed(cx);
        io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {message}"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketStream<S> {
    /// Reads the next frame header and enters its state; `Ok(false)` is a clean
    /// EOF between frames.
    fn poll_frame_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !ready!(poll_fill(
            &mut self.inner,
            cx,
            &mut self.read_header[..2],
            &mut self.read_header_len
        ))? {
            return Poll::Ready(Ok(false));
        }
        let [b0, b1] = [self.read_header[0], self.read_header[1]];
        let fin = b0 & FIN != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & MASKED != 0;
        let len7 = b1 & 0x7f;
        if b0 & 0x70 != 0 {
            return Poll::Ready(Err(self.fail(
                cx,
                CLOSE_PROTOCOL_ERROR,
                "reserved bits set",
            )));
        }
        match opcode {
            OP_TEXT => {
                return Poll::Ready(Err(self.fail(
                    cx,
                    CLOSE_UNSUPPORTED_DATA,
                    "text frame on a binary stream",
                )))
            }
            OP_CONTINUATION if !self.in_message => {
                return Poll::Ready(Err(self.fail(
                    cx,
                    CLOSE_PROTOCOL_ERROR,
                    "continuation frame outside a message",
                )));
            }
            OP_BINARY if self.in_message => {
                return Poll::Ready(Err(self.fail(
                    cx,
                    CLOSE_PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                )));
            }
            OP_CONTINUATION | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || usize::from(len7) > MAX_CONTROL {
                    return Poll::Ready(Err(self.fail(
                        cx,
                        CLOSE_PROTOCOL_ERROR,
                        "fragmented or oversized control frame",
                    )));
                }
            }
            _ => return Poll::Ready(Err(self.fail(cx, CLOSE_PROTOCOL_ERROR, "unknown opcode"))),
        }
        match (self.role, masked) {
            (Role::Server, false) => {
                return Poll::Ready(Err(self.fail(
                    cx,
                    CLOSE_PROTOCOL_ERROR,
                    "unmasked client frame",
                )))
            }
            (Role::Client, true) => {
                return Poll::Ready(Err(self.fail(
                    cx,
                    CLOSE_PROTOCOL_ERROR,
                    "masked server frame",
                )))
            }
            _ => {}
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        // At least two bytes are in, so an EOF here is an error, never `Ok(false)`.
        ready!(poll_fill(
            &mut self.inner,
            cx,
            &mut self.read_header[..need],
            &mut self.read_header_len
        ))?;
        self.read_header_len = 0;
        let h = &self.read_header;
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            8 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            _ => u64::from(len7),
        };
        if len >> 63 != 0 {
            return Poll::Ready(Err(self.fail(
                cx,
                CLOSE_PROTOCOL_ERROR,
                "frame length with the top bit set",
            )));
        }
        self.read_mask = masked.then(|| [h[need - 4], h[need - 3], h[need - 2], h[need - 1]]);
        self.read_mask_pos = 0;
        self.read_state = if opcode & 0x8 != 0 {
            ReadState::Control {
                opcode,
                len: len as usize,
                filled: 0,
            }
        } else {
            self.in_message = !fin;
            ReadState::Data { remaining: len }
        };
        Poll::Ready(Ok(true))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocketStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pinger.poll_due(cx) && this.close == CloseState::Open {
            this.ping_pending = true;
        }
        // Pushing control frames out must not hold up reading: a full send buffer
        // only delays them until the next read or write. Once reading is over,
        // a failed Close reply is of no interest to the reader.
        if let Poll::Ready(Err(e)) = this.poll_control_flushed(cx) {
            if !matches!(this.read_state, ReadState::Closed | ReadState::Failed) {
                return Poll::Ready(Err(e));
            }
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.read_state {
                ReadState::Closed => return Poll::Ready(Ok(())),
                ReadState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "websocket: the stream failed earlier",
                    )));
                }
                ReadState::Data { remaining: 0 } => this.read_state = ReadState::Header,
                ReadState::Data { remaining } => {
                    let max = usize::try_from(*remaining).unwrap_or(usize::MAX);
                    let start = buf.filled().len();
                    let n = ready!(poll_read_limited(&mut this.inner, cx, buf, max))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the tunnel closed inside a WebSocket frame",
                        )));
                    }
                    *remaining -= n as u64;
                    if let Some(key) = this.read_mask {
                        apply_mask(&mut buf.filled_mut()[start..], key, this.read_mask_pos);
                        this.read_mask_pos = (this.read_mask_pos + n) % 4;
                    }
                    return Poll::Ready(Ok(()));
                }
                ReadState::Control {
                    opcode,
                    len,
                    filled,
                } => {
                    let (opcode, len) = (*opcode, *len);
                    if !ready!(poll_fill(
                        &mut this.inner,
                        cx,
                        &mut this.bufs.received[..len],
                        filled
                    ))? {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the tunnel closed inside a WebSocket control frame",
                        )));
                    }
                    let payload = &mut this.bufs.received[..len];
                    if let Some(key) = this.read_mask {
                        apply_mask(payload, key, 0);
                    }
                    this.read_state = ReadState::Header;
                    match opcode {
                        OP_PING => {
                            if this.close == CloseState::Open {
                                this.bufs.pong[..len].copy_from_slice(payload);
                                this.pong = Some(len);
                            }
                            if let Poll::Ready(Err(e)) = this.poll_control_flushed(cx) {
                                return Poll::Ready(Err(e));
                            }
                        }
                        OP_CLOSE => {
                            if len == 1 {
                                return Poll::Ready(Err(this.fail(
                                    cx,
                                    CLOSE_PROTOCOL_ERROR,
                                    "one-byte Close payload",
                                )));
                            }
                            let code =
                                (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            if let Some(code) = code.filter(|c| !close_code_allowed(*c)) {
                                return Poll::Ready(Err(this.fail(
                                    cx,
                                    CLOSE_PROTOCOL_ERROR,
                                    &format!("Close code {code} may not be sent"),
                                )));
                            }
                            if len > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                                return Poll::Ready(Err(this.fail(
                                    cx,
                                    CLOSE_INVALID_PAYLOAD,
                                    "Close reason is not UTF-8",
                                )));
                            }
                            this.read_state = ReadState::Closed;
                            let abnormal = code
                                .filter(|c| !matches!(c, 1000 | 1001))
                                .map(|c| closed_abnormally(this.role, c, &payload[2..]));
                            if this.close == CloseState::Open {
                                // Echo the peer's code; an empty Close gets an
                                // empty one (1005 is never sent).
                                this.close = CloseState::Queued(code);
                            }
                            // Best effort: EOF either way; a later write, flush or
                            // shutdown finishes sending the reply.
                            let _ = this.poll_control_flushed(cx);
                            // A Close other than 1000/1001 is not a clean end.
                            return Poll::Ready(abnormal.map_or(Ok(()), Err));
                        }
                        _ => {} // Pong: nothing to do.
                    }
                }
                ReadState::Header => {
                    if !ready!(this.poll_frame_header(cx))? {
                        // A TCP close without a Close frame is tolerated.
                        this.read_state = ReadState::Closed;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocketStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// One data frame's header goes out with its payload in the same write
    /// to the inner stream (a server passes the slices on as they are, a
    /// client masks a copy behind the header), so that a frame costs one
    /// system call, not two, and several TLS records (rustls hands them over
    /// together) travel in one frame.
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
        if this.at_write_boundary() {
            ready!(this.poll_control(cx))?;
            if this.close != CloseState::Open {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the WebSocket stream is closed",
                )));
            }
            let len = match this.role {
                Role::Server => total.min(MAX_FRAME),
                Role::Client => total.min(SCRATCH),
            };
            let mask = this.new_mask()?;
            this.write_header_len =
                encode_header(&mut this.write_header, FIN | OP_BINARY, len as u64, mask);
            this.write_header_pos = 0;
            this.write_remaining = len;
            this.write_mask = mask.unwrap_or_default();
            this.write_mask_pos = 0;
        }
        loop {
            let header = &this.write_header[this.write_header_pos..this.write_header_len];
            let len = total.min(this.write_remaining);
            let n = match this.role {
                Role::Server => ready!(poll_write_frame(&mut this.inner, cx, header, bufs, len))?,
                Role::Client => {
                    // Masked anew on every call: only what the inner stream
                    // takes counts.
                    let h = header.len();
                    let scratch = &mut this.scratch[..h + len];
                    scratch[..h].copy_from_slice(header);
                    let mut at = h;
                    for b in bufs {
                        let take = b.len().min(h + len - at);
                        scratch[at..at + take].copy_from_slice(&b[..take]);
                        at += take;
                    }
                    apply_mask(&mut scratch[h..], this.write_mask, this.write_mask_pos);
                    ready!(Pin::new(&mut this.inner).poll_write(cx, scratch))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let header_part = n.min(this.write_header_len - this.write_header_pos);
            this.write_header_pos += header_part;
            let payload = n - header_part;
            if payload == 0 {
                // Only (part of) the header went out: on with the rest.
                continue;
            }
            this.write_remaining -= payload;
            this.write_mask_pos = (this.write_mask_pos + payload) % 4;
            this.pinger.sent();
            return Poll::Ready(Ok(payload));
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_control(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.control_unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.close == CloseState::Open {
            if this.at_write_boundary() {
                this.close = CloseState::Queued(Some(CLOSE_NORMAL));
            } else {
                // The frame cannot be finished without the caller's bytes; the
                // peer sees the tunnel end inside it.
                log::debug!("websocket shut down inside a data frame: no Close sent");
            }
        }
        ready!(this.poll_control(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.control_unflushed = false;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The read error for a peer's Close with `code` (not 1000 or 1001): the
/// tunnel did not end cleanly, and the reader must hear it.
fn closed_abnormally(role: Role, code: u16, reason: &[u8]) -> io::Error {
    let peer = match role {
        Role::Client => "server",
        Role::Server => "client",
    };
    let reason = String::from_utf8_lossy(reason);
    let reason = match reason.trim() {
        "" => String::new(),
        r => format!(": {r}"),
    };
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("the {peer} closed the tunnel with WebSocket code {code}{reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_wire::CountingWire;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame as a client sends it: `b0` (FIN, opcode) and the payload masked.
    fn masked_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut header = [0; MAX_HEADER];
        let n = encode_header(&mut header, b0, payload.len() as u64, Some(KEY));
        let mut frame = header[..n].to_vec();
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        frame
    }

    /// Reads one frame off the wire: its first byte, whether it was masked, and
    /// its payload unmasked.
    async fn read_frame(wire: &mut DuplexStream) -> (u8, bool, Vec<u8>) {
        let (b0, key, payload) = read_keyed_frame(wire).await;
        (b0, key.is_some(), payload)
    }

    /// [`read_frame`], with the mask key if there was one.
    async fn read_keyed_frame(wire: &mut DuplexStream) -> (u8, Option<[u8; 4]>, Vec<u8>) {
        let mut h = [0u8; 2];
        wire.read_exact(&mut h).await.unwrap();
        let len = match h[1] & 0x7f {
            126 => u64::from(wire.read_u16().await.unwrap()),
            127 => wire.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let masked = h[1] & MASKED != 0;
        let mut key = [0u8; 4];
        if masked {
            wire.read_exact(&mut key).await.unwrap();
        }
        let mut payload = vec![0; len as usize];
        wire.read_exact(&mut payload).await.unwrap();
        if masked {
            apply_mask(&mut payload, key, 0);
        }
        (h[0], masked.then_some(key), payload)
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn a_server_and_a_client_round_trip_a_mebibyte_each_way() {
        // An odd buffer size splits headers and payloads across writes.
        let (a, b) = tokio::io::duplex(5003);
        let server = WebSocketStream::new(a, Role::Server, None);
        let client = WebSocketStream::new(b, Role::Client, None);
        let up = pseudo_random(1 << 20, 1);
        let down = pseudo_random(1 << 20, 2);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let mut got_up = vec![0; up.len()];
        let mut got_down = vec![0; down.len()];
        let (r1, r2, w1, w2) = tokio::join!(
            server_r.read_exact(&mut got_up),
            client_r.read_exact(&mut got_down),
            async {
                client_w.write_all(&up).await?;
                client_w.flush().await
            },
            async {
                server_w.write_all(&down).await?;
                server_w.flush().await
            },
        );
        r1.unwrap();
        r2.unwrap();
        w1.unwrap();
        w2.unwrap();
        assert!(got_up == up, "client to server bytes differ");
        assert!(got_down == down, "server to client bytes differ");

        // Closing handshake: the client's Close ends the server's reads, and the
        // server's answer ends the client's.
        let mut server = server_r.unsplit(server_w);
        let mut client = client_r.unsplit(client_w);
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_client_masks_every_frame_with_a_fresh_key() {
        let (a, mut wire) = tokio::io::duplex(1 << 20);
        let mut client = WebSocketStream::new(a, Role::Client, None);
        let data = pseudo_random(100_000, 3);
        client.write_all(&data).await.unwrap();
        client.flush().await.unwrap();
        let mut got = Vec::new();
        let mut keys = Vec::new();
        while got.len() < data.len() {
            let (b0, key, payload) = read_keyed_frame(&mut wire).await;
            assert_eq!(b0, FIN | OP_BINARY);
            keys.push(key.expect("a masked frame"));
            got.extend(payload);
        }
        assert!(got == data);
        assert_eq!(keys.len(), data.len().div_ceil(SCRATCH), "32 KiB frames");
        for (i, key) in keys.iter().enumerate() {
            assert!(!keys[..i].contains(key), "a key used twice: {keys:?}");
        }
    }

    /// The wire's frames, unmasked: (first byte, masked, payload) each.
    fn frames_of(mut wire: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (b0, b1) = (wire[0], wire[1]);
            let (len, mut at) = match b1 & 0x7f {
                126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
                127 => (
                    u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (usize::from(n), 2),
            };
            let key = (b1 & MASKED != 0).then(|| {
                at += 4;
                [wire[at - 4], wire[at - 3], wire[at - 2], wire[at - 1]]
            });
            let mut payload = wire[at..at + len].to_vec();
            if let Some(key) = key {
                apply_mask(&mut payload, key, 0);
            }
            frames.push((b0, key.is_some(), payload));
            wire = &wire[at + len..];
        }
        frames
    }

    #[tokio::test]
    async fn a_frame_goes_out_in_one_write_with_its_header() {
        // A server: three TLS-record-sized slices, as rustls hands them over,
        // travel as one frame in one write to the socket.
        let records: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(16_406, 10 + i)).collect();
        let slices: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        let mut server = WebSocketStream::new(CountingWire::default(), Role::Server, None);
        let n = server.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 3 * 16_406);
        assert_eq!(server.inner.writes(), 1);
        let frames = frames_of(&server.inner.bytes());
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].0, frames[0].1), (FIN | OP_BINARY, false));
        assert!(frames[0].2 == records.concat());

        // A client: the header and the masked payload in one write too.
        let data = pseudo_random(20_000, 13);
        let mut client = WebSocketStream::new(CountingWire::default(), Role::Client, None);
        assert_eq!(client.write(&data).await.unwrap(), data.len());
        assert_eq!(client.inner.writes(), 1);
        let frames = frames_of(&client.inner.bytes());
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].0, frames[0].1), (FIN | OP_BINARY, true));
        assert!(frames[0].2 == data);
    }

    #[tokio::test]
    async fn a_server_writes_unmasked_frames_with_the_shortest_length() {
        let (a, mut wire) = tokio::io::duplex(1 << 20);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        for (len, header) in [
            (125usize, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let data = pseudo_random(len, len as u64);
            server.write_all(&data).await.unwrap();
            let mut got = vec![0; header.len() + len];
            wire.read_exact(&mut got).await.unwrap();
            assert_eq!(got[..header.len()], header[..], "header for {len} bytes");
            assert!(got[header.len()..] == data[..]);
        }
    }

    #[tokio::test]
    async fn a_long_frame_streams_through_in_pieces() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        let data = pseudo_random(200_000, 4);
        let frame = masked_frame(FIN | OP_BINARY, &data);
        assert_eq!(frame[1], MASKED | 127, "a 64-bit length");
        let writer = tokio::spawn(async move {
            wire.write_all(&frame).await.unwrap();
            wire
        });
        let mut got = vec![0; data.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == data);
        drop(writer.await.unwrap());
        let mut rest = Vec::new();
        assert_eq!(
            server.read_to_end(&mut rest).await.unwrap(),
            0,
            "EOF between frames is tolerated"
        );
    }

    #[tokio::test]
    async fn the_server_rejects_an_unmasked_client_frame() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        wire.write_all(&[0x82, 3, b'a', b'b', b'c']).await.unwrap();
        let err = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_CLOSE, false, 1002u16.to_be_bytes().to_vec())
        );
        let err = server.write(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn the_client_rejects_a_masked_server_frame() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut client = WebSocketStream::new(a, Role::Client, None);
        wire.write_all(&masked_frame(FIN | OP_BINARY, b"abc"))
            .await
            .unwrap();
        let err = client.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let (b0, masked, payload) = read_frame(&mut wire).await;
        assert_eq!(
            (b0, masked, payload),
            (FIN | OP_CLOSE, true, 1002u16.to_be_bytes().to_vec())
        );
    }

    #[tokio::test]
    async fn a_fragmented_message_is_reassembled_and_a_ping_between_is_answered() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        let mut frames = masked_frame(OP_BINARY, b"hello ");
        frames.extend(masked_frame(FIN | OP_PING, b"are you there?"));
        frames.extend(masked_frame(OP_CONTINUATION, b"wide "));
        frames.extend(masked_frame(FIN | OP_PONG, b"ignored"));
        frames.extend(masked_frame(FIN | OP_CONTINUATION, b"world"));
        wire.write_all(&frames).await.unwrap();
        let mut got = [0u8; 16];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello wide world");
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_PONG, false, b"are you there?".to_vec())
        );
    }

    #[tokio::test]
    async fn fragments_out_of_order_are_protocol_errors() {
        for frames in [
            masked_frame(FIN | OP_CONTINUATION, b"x"),
            [
                masked_frame(OP_BINARY, b"x"),
                masked_frame(FIN | OP_BINARY, b"y"),
            ]
            .concat(),
            masked_frame(OP_PING, b""),
            masked_frame(FIN | 0x40 | OP_BINARY, b"x"),
            masked_frame(FIN | 0x3, b"x"),
        ] {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let mut server = WebSocketStream::new(a, Role::Server, None);
            wire.write_all(&frames).await.unwrap();
            let mut sink = Vec::new();
            let err = server.read_to_end(&mut sink).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{frames:?}");
            assert_eq!(
                read_frame(&mut wire).await,
                (FIN | OP_CLOSE, false, 1002u16.to_be_bytes().to_vec())
            );
        }
    }

    #[tokio::test]
    async fn a_text_frame_is_closed_with_1003() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        wire.write_all(&masked_frame(FIN | OP_TEXT, b"hi"))
            .await
            .unwrap();
        let err = server.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_CLOSE, false, 1003u16.to_be_bytes().to_vec())
        );
    }

    #[tokio::test]
    async fn a_close_is_answered_and_ends_the_stream() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend(b"going away");
        wire.write_all(&masked_frame(FIN | OP_BINARY, b"last"))
            .await
            .unwrap();
        wire.write_all(&masked_frame(FIN | OP_CLOSE, &payload))
            .await
            .unwrap();
        wire.write_all(&masked_frame(FIN | OP_BINARY, b"after close"))
            .await
            .unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_CLOSE, false, 1001u16.to_be_bytes().to_vec())
        );
        assert_eq!(
            server.read(&mut [0u8; 16]).await.unwrap(),
            0,
            "EOF from then on"
        );
        let err = server.write(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // Shutting down afterwards sends no second Close.
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        wire.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn close_codes_are_checked_as_rfc_6455_says() {
        // (code, reason bytes, the code answered)
        let cases: &[(u16, &[u8], u16)] = &[
            (1000, b"done", 1000),
            (3000, b"", 3000),
            (4999, b"app", 4999),
            (1012, b"", 1012),
            (999, b"", CLOSE_PROTOCOL_ERROR),
            (1004, b"", CLOSE_PROTOCOL_ERROR),
            (1005, b"", CLOSE_PROTOCOL_ERROR),
            (1006, b"", CLOSE_PROTOCOL_ERROR),
            (1015, b"", CLOSE_PROTOCOL_ERROR),
            (2000, b"", CLOSE_PROTOCOL_ERROR),
            (5000, b"", CLOSE_PROTOCOL_ERROR),
            (1000, b"\xff\xfe", CLOSE_INVALID_PAYLOAD),
        ];
        for &(code, reason, answer) in cases {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let mut server = WebSocketStream::new(a, Role::Server, None);
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            wire.write_all(&masked_frame(FIN | OP_CLOSE, &payload))
                .await
                .unwrap();
            let read = server.read(&mut [0u8; 16]).await;
            match (answer == code, code) {
                (true, 1000) => assert_eq!(read.unwrap(), 0, "a normal Close ends the stream"),
                // Valid, but not a normal end: the reader is told.
                (true, _) => assert_eq!(
                    read.unwrap_err().kind(),
                    io::ErrorKind::ConnectionAborted,
                    "{code}"
                ),
                (false, _) => assert_eq!(
                    read.unwrap_err().kind(),
                    io::ErrorKind::InvalidData,
                    "{code}"
                ),
            }
            server.flush().await.unwrap();
            assert_eq!(
                read_frame(&mut wire).await,
                (FIN | OP_CLOSE, false, answer.to_be_bytes().to_vec()),
                "{code} {reason:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_queued_close_goes_out_once_and_nothing_after_it() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        server.write_all(b"tail").await.unwrap();
        server.queue_close(CLOSE_INTERNAL_ERROR);
        server.queue_close(CLOSE_NORMAL);
        server.flush().await.unwrap();
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_BINARY, false, b"tail".to_vec())
        );
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_CLOSE, false, 1011u16.to_be_bytes().to_vec()),
            "the first code queued wins"
        );
        // A Ping after our Close gets no Pong; the peer's Close ends the stream.
        wire.write_all(&masked_frame(FIN | OP_PING, b"late"))
            .await
            .unwrap();
        wire.write_all(&masked_frame(FIN | OP_CLOSE, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(server);
        let mut after = Vec::new();
        wire.read_to_end(&mut after).await.unwrap();
        assert!(after.is_empty(), "nothing after our Close: {after:?}");
    }

    #[tokio::test]
    async fn an_empty_close_is_answered_with_an_empty_close() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        wire.write_all(&masked_frame(FIN | OP_CLOSE, b""))
            .await
            .unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_CLOSE, false, Vec::new())
        );
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_an_eof() {
        for cut in [1, 4, 9] {
            let (a, mut wire) = tokio::io::duplex(1 << 16);
            let mut server = WebSocketStream::new(a, Role::Server, None);
            wire.write_all(&masked_frame(FIN | OP_BINARY, b"abcdefgh")[..cut])
                .await
                .unwrap();
            drop(wire);
            let mut got = Vec::new();
            let err = server.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "cut after {cut} bytes"
            );
        }
    }

    #[tokio::test]
    async fn a_pong_waits_for_the_end_of_the_data_frame_being_written() {
        // A small pipe so that a write stops inside its frame.
        let (a, mut wire) = tokio::io::duplex(16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        let data = pseudo_random(100, 5);
        let n = server.write(&data).await.unwrap();
        assert_eq!(
            n, 14,
            "the 2-byte header and 14 payload bytes fill the pipe"
        );
        let mut first = [0u8; 16];
        wire.read_exact(&mut first).await.unwrap();
        wire.write_all(&masked_frame(FIN | OP_PING, b"p"))
            .await
            .unwrap();
        // The read takes the Ping and finds no data; it must not put the Pong
        // inside the data frame.
        let read =
            tokio::time::timeout(Duration::from_millis(50), server.read(&mut [0u8; 16])).await;
        assert!(read.is_err(), "no data to read");
        let writer = tokio::spawn(async move {
            server.write_all(&data[n..]).await.unwrap();
            server.flush().await.unwrap();
            server
        });
        let mut rest = vec![0u8; 100 - 14];
        wire.read_exact(&mut rest).await.unwrap();
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_PONG, false, b"p".to_vec())
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_is_pinged() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, Some(Duration::from_secs(30)));
        let reader = tokio::spawn(async move {
            let mut sink = [0u8; 16];
            server.read(&mut sink).await
        });
        tokio::time::sleep(Duration::from_secs(61)).await;
        for _ in 0..2 {
            let ping = read_frame(&mut wire).await;
            assert_eq!(
                ping,
                (FIN | OP_PING, false, Vec::new()),
                "two pings after 61 s"
            );
        }
        reader.abort();
    }

    #[tokio::test]
    async fn shutdown_sends_close_1000() {
        let (a, mut wire) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::new(a, Role::Server, None);
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_BINARY, false, b"bye".to_vec())
        );
        assert_eq!(
            read_frame(&mut wire).await,
            (FIN | OP_CLOSE, false, 1000u16.to_be_bytes().to_vec())
        );
        let mut rest = Vec::new();
        wire.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
