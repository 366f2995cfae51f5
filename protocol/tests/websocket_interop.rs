//! `WebSocketStream` against `tungstenite`, an independent implementation of
//! RFC 6455, in both directions: our stream as the server with tungstenite as
//! the client, and our stream as the client with tungstenite as the server.
//! Each test runs for both pairings over a loopback TCP connection (tungstenite
//! blocking on a thread, our stream on the runtime), after the HTTP handshake,
//! which the handshake's own tests cover. What is checked is what the other
//! implementation sees: the bytes of every message, Pongs with their payloads,
//! Close codes, and the codes of the Closes our side sends on protocol errors.
//! One more test, over an in-memory duplex, compares every frame our side
//! writes with tungstenite's encoding of the same frame, byte for byte.

use std::io::{self, Cursor};
use std::net::{TcpListener, TcpStream as StdTcp};
use std::time::Duration;

use alpn_protocol::framing::{Role, WebSocketStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocket};
use tungstenite::Message;

/// The tungstenite end: blocking, on a loopback socket.
type Peer = WebSocket<StdTcp>;

/// How long either side waits for the other before the test fails instead of
/// hanging (a bound, not a measurement).
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `peer` on tungstenite (in the role opposite `ours`) on a thread and
/// `local` on our stream in `ours`, joined by a loopback connection; returns
/// what each returned. A panic on either side fails the test.
async fn pair<P, L, T, U>(ours: Role, ping_interval: Option<Duration>, peer: P, local: L) -> (T, U)
where
    P: FnOnce(&mut Peer) -> T + Send + 'static,
    T: Send + 'static,
    L: AsyncFnOnce(&mut WebSocketStream<TcpStream>) -> U,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = StdTcp::connect(listener.local_addr().unwrap()).unwrap();
    let (mine, _) = listener.accept().unwrap();
    for s in [&theirs, &mine] {
        s.set_nodelay(true).unwrap();
    }
    theirs.set_read_timeout(Some(PATIENCE)).unwrap();
    mine.set_nonblocking(true).unwrap();
    let role = match ours {
        Role::Server => WsRole::Client,
        Role::Client => WsRole::Server,
    };
    let peer = tokio::task::spawn_blocking(move || {
        let mut ws = WebSocket::from_raw_socket(theirs, role, None);
        peer(&mut ws)
    });
    let mut stream = WebSocketStream::new(TcpStream::from_std(mine).unwrap(), ours, ping_interval);
    let local = tokio::time::timeout(PATIENCE, local(&mut stream))
        .await
        .expect("our side finished in time");
    // Our end stays open until tungstenite is done: closing a socket with
    // unread bytes resets the connection, which could discard what tungstenite
    // has not read yet.
    let peer = peer.await.expect("the tungstenite side panicked");
    drop(stream);
    (peer, local)
}

/// Both pairings: our stream as the server, then as the client.
const ROLES: [Role; 2] = [Role::Server, Role::Client];

fn payload(len: usize, seed: u64) -> Vec<u8> {
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

/// Reads binary messages on the tungstenite side until `len` bytes are in;
/// anything but a binary message fails the test.
fn read_bytes(ws: &mut Peer, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        match ws.read() {
            Ok(Message::Binary(data)) => got.extend_from_slice(&data),
            other => panic!(
                "expected binary data, {} of {len} bytes in: {other:?}",
                got.len()
            ),
        }
    }
    assert_eq!(got.len(), len, "no more bytes than were written");
    got
}

/// Reads on the tungstenite side until the next Close; returns its frame.
/// Data, Pings and Pongs before it fail the test.
fn read_close(ws: &mut Peer) -> Option<CloseFrame> {
    match ws.read() {
        Ok(Message::Close(frame)) => frame,
        other => panic!("expected a Close, got {other:?}"),
    }
}

/// After the Close handshake, tungstenite reports the connection closed.
fn read_end(ws: &mut Peer) {
    match ws.read() {
        Err(WsError::ConnectionClosed) => {}
        other => panic!("expected the connection to end cleanly, got {other:?}"),
    }
}

/// Reads on our side until EOF or an error; returns the bytes and the outcome.
async fn read_to_end<S>(stream: &mut WebSocketStream<S>) -> (Vec<u8>, io::Result<()>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Every length class of RFC 6455 section 5.2 (7-bit, 16-bit, 64-bit lengths,
/// each at its edges), our write size (64 KiB) at its edges, and a few MiB:
/// tungstenite sends each as one binary message, our side reads exactly those
/// bytes and writes them back, and tungstenite reads exactly them again.
#[tokio::test]
async fn binary_messages_of_every_length_class_cross_byte_for_byte() {
    const SIZES: [usize; 10] = [
        0,
        1,
        125,
        126,
        127,
        65_535,
        65_536,
        65_537,
        1 << 20,
        (3 << 20) + 7,
    ];
    for ours in ROLES {
        let (echoed, ()) = pair(
            ours,
            None,
            |ws| {
                for (i, len) in SIZES.into_iter().enumerate() {
                    let sent = payload(len, i as u64);
                    ws.send(Message::binary(sent.clone())).unwrap();
                    assert_eq!(read_bytes(ws, len), sent, "{len} bytes back");
                }
                ws.close(None).unwrap();
                read_close(ws)
            },
            async |stream| {
                for (i, len) in SIZES.into_iter().enumerate() {
                    let mut got = vec![0; len];
                    stream.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, payload(len, i as u64), "{ours:?} read {len} bytes");
                    stream.write_all(&got).await.unwrap();
                    stream.flush().await.unwrap();
                }
                let (rest, end) = read_to_end(stream).await;
                assert!(rest.is_empty() && end.is_ok(), "{ours:?}: {end:?}");
                stream.shutdown().await.unwrap();
            },
        )
        .await;
        // Our side echoes tungstenite's empty Close with an empty Close.
        assert_eq!(echoed, None, "{ours:?}");
    }
}

/// A message split across continuation frames by tungstenite (an empty first
/// fragment, a Ping between fragments, fragments of every length class) reads
/// as the plain concatenation; the Ping in the middle is answered at once.
#[tokio::test]
async fn fragmented_messages_from_tungstenite_read_as_their_concatenation() {
    let fragments: Vec<Vec<u8>> = [0, 1, 125, 126, 70_000, 3]
        .into_iter()
        .enumerate()
        .map(|(i, len)| payload(len, 100 + i as u64))
        .collect();
    let whole: Vec<u8> = fragments.concat();
    let second = payload(200_000, 7);
    let expected = [whole.clone(), second.clone()].concat();
    for ours in ROLES {
        let (fragments, whole, second) = (fragments.clone(), whole.clone(), second.clone());
        let echo_len = whole.len();
        let ((), ()) = pair(
            ours,
            None,
            move |ws| {
                let last = fragments.len() - 1;
                for (i, fragment) in fragments.into_iter().enumerate() {
                    let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
                    ws.send(Message::Frame(Frame::message(fragment, opcode, i == last)))
                        .unwrap();
                    if i == 2 {
                        ws.send(Message::Ping(b"between fragments"[..].into()))
                            .unwrap();
                        match ws.read() {
                            Ok(Message::Pong(p)) => assert_eq!(&p[..], b"between fragments"),
                            other => panic!("expected the Pong, got {other:?}"),
                        }
                    }
                }
                // A second message, in two fragments with 64-bit lengths.
                let (a, b) = second.split_at(100_000);
                for (part, opcode, fin) in [(a, Data::Binary, false), (b, Data::Continue, true)] {
                    let frame = Frame::message(part.to_vec(), OpCode::Data(opcode), fin);
                    ws.send(Message::Frame(frame)).unwrap();
                }
                assert_eq!(read_bytes(ws, whole.len()), whole, "echoed");
                ws.close(None).unwrap();
                assert_eq!(read_close(ws), None);
            },
            async |stream| {
                let mut got = vec![0; expected.len()];
                stream.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expected, "{ours:?}");
                stream.write_all(&got[..echo_len]).await.unwrap();
                stream.flush().await.unwrap();
                let (rest, end) = read_to_end(stream).await;
                assert!(rest.is_empty() && end.is_ok(), "{ours:?}: {end:?}");
                stream.shutdown().await.unwrap();
            },
        )
        .await;
    }
}

/// tungstenite's Pings (empty, one byte, the 125-byte maximum) each get a Pong
/// with the same payload; data sent around them is untouched.
#[tokio::test]
async fn tungstenite_pings_get_pongs_with_their_payloads() {
    for ours in ROLES {
        let ((), ()) = pair(
            ours,
            None,
            |ws| {
                for (i, len) in [0, 1, 125].into_iter().enumerate() {
                    let ping = payload(len, 200 + i as u64);
                    ws.send(Message::Ping(ping.clone().into())).unwrap();
                    match ws.read() {
                        Ok(Message::Pong(p)) => assert_eq!(&p[..], &ping[..], "{len}-byte Pong"),
                        other => panic!("expected a Pong, got {other:?}"),
                    }
                }
                ws.send(Message::binary(b"after the pings".to_vec()))
                    .unwrap();
                assert_eq!(read_bytes(ws, 15), b"after the pings");
                ws.close(None).unwrap();
                assert_eq!(read_close(ws), None);
            },
            async |stream| {
                let mut got = [0u8; 15];
                stream.read_exact(&mut got).await.unwrap();
                stream.write_all(&got).await.unwrap();
                stream.flush().await.unwrap();
                let (rest, end) = read_to_end(stream).await;
                assert!(rest.is_empty() && end.is_ok(), "{ours:?}: {end:?}");
                stream.shutdown().await.unwrap();
            },
        )
        .await;
    }
}

/// Our side's pings (a server's on its interval, a client's after an interval
/// with nothing sent) reach tungstenite as empty Pings; the Pongs tungstenite
/// answers with are taken in stride, and data still flows after them.
#[tokio::test]
async fn our_pings_reach_tungstenite_and_its_pongs_are_accepted() {
    for ours in ROLES {
        let (pings, got) = pair(
            ours,
            Some(Duration::from_millis(20)),
            |ws| {
                let mut pings = 0;
                while pings < 3 {
                    match ws.read() {
                        // tungstenite queues the Pong and sends it with its next read or write.
                        Ok(Message::Ping(p)) => {
                            assert!(p.is_empty(), "our pings carry no payload");
                            pings += 1;
                        }
                        other => panic!("expected a Ping, got {other:?}"),
                    }
                }
                ws.send(Message::binary(b"still here".to_vec())).unwrap();
                ws.close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
                .unwrap();
                // Pings may cross the Close; tungstenite ignores them once closing.
                loop {
                    match ws.read() {
                        Ok(Message::Ping(_)) => {}
                        Ok(Message::Close(frame)) => {
                            assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                            break;
                        }
                        other => panic!("expected the Close, got {other:?}"),
                    }
                }
                pings
            },
            async |stream| {
                let (got, end) = read_to_end(stream).await;
                assert!(end.is_ok(), "{ours:?}: {end:?}");
                stream.shutdown().await.unwrap();
                got
            },
        )
        .await;
        assert_eq!((pings, &got[..]), (3, &b"still here"[..]), "{ours:?}");
    }
}

/// The Close codes a tunnel ends with: normal, going away (a draining router),
/// and one from the application range.
const CLOSE_CODES: [u16; 3] = [1000, 1001, 3000];

/// tungstenite closes with each code and a reason: our side echoes the code,
/// and its reader sees a clean EOF for 1000 and 1001 and an error naming the
/// code and the reason otherwise.
#[tokio::test]
async fn tungstenite_closes_with_each_code_and_our_side_echoes_it() {
    for ours in ROLES {
        for code in CLOSE_CODES {
            let (echo, (got, end)) = pair(
                ours,
                None,
                move |ws| {
                    ws.send(Message::binary(b"last words".to_vec())).unwrap();
                    ws.close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: "bye".into(),
                    }))
                    .unwrap();
                    let echo = read_close(ws);
                    read_end(ws);
                    echo
                },
                async |stream| {
                    let read = read_to_end(stream).await;
                    stream.shutdown().await.unwrap();
                    read
                },
            )
            .await;
            assert_eq!(got, b"last words", "{ours:?} {code}");
            let echo = echo.expect("a Close with a code");
            assert_eq!(u16::from(echo.code), code, "{ours:?} echoes the code");
            match code {
                1000 | 1001 => assert!(end.is_ok(), "{ours:?} {code}: {end:?}"),
                _ => {
                    let e = end.expect_err("an abnormal code is an error for our reader");
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
                    assert!(e.to_string().contains(&format!("code {code}: bye")), "{e}");
                }
            }
        }
    }
}

/// Our side closes with each code (1000 through `shutdown`, the others with
/// `queue_close` first, as the router does at its drain deadline): tungstenite
/// reads exactly that code and echoes it, which our reader then sees.
#[tokio::test]
async fn our_side_closes_with_each_code_and_tungstenite_echoes_it() {
    for ours in ROLES {
        for code in CLOSE_CODES {
            let (received, (got, end)) = pair(
                ours,
                None,
                |ws| {
                    assert_eq!(read_bytes(ws, 10), b"last words");
                    let received = read_close(ws);
                    // Its echo goes out with this read, which then sees the end.
                    read_end(ws);
                    received
                },
                async |stream| {
                    stream.write_all(b"last words").await.unwrap();
                    if code != 1000 {
                        stream.queue_close(code);
                    }
                    stream.shutdown().await.unwrap();
                    read_to_end(stream).await
                },
            )
            .await;
            let received = received.expect("a Close with a code");
            assert_eq!(
                (u16::from(received.code), received.reason.as_str()),
                (code, ""),
                "{ours:?}"
            );
            assert!(got.is_empty(), "{ours:?} {code}");
            match code {
                1000 | 1001 => assert!(end.is_ok(), "{ours:?} {code}: {end:?}"),
                _ => {
                    let e = end.expect_err("the echoed abnormal code reaches our reader");
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
                    assert!(e.to_string().contains(&format!("code {code}")), "{e}");
                }
            }
        }
    }
}

/// Sends `frame` from tungstenite after some data; returns the Close our side
/// answered with, and our reader's outcome.
async fn protocol_error(ours: Role, frame: Frame) -> (Option<CloseFrame>, io::Result<()>) {
    let (close, (got, end)) = pair(
        ours,
        None,
        |ws| {
            ws.send(Message::binary(b"fine so far".to_vec())).unwrap();
            ws.send(Message::Frame(frame)).unwrap();
            read_close(ws)
        },
        async |stream| read_to_end(stream).await,
    )
    .await;
    assert_eq!(
        got, b"fine so far",
        "{ours:?}: data before the error arrives"
    );
    (close, end)
}

/// A text frame on a tunnel is data of a type we cannot accept: our side fails
/// the read and closes with 1003, which tungstenite reads.
#[tokio::test]
async fn a_text_frame_from_tungstenite_is_answered_with_close_1003() {
    for ours in ROLES {
        let text = Frame::message(&b"hello"[..], OpCode::Data(Data::Text), true);
        let (close, end) = protocol_error(ours, text).await;
        let close = close.expect("a Close with a code");
        assert_eq!(u16::from(close.code), 1003, "{ours:?}");
        assert_eq!(
            end.expect_err("the read fails").kind(),
            io::ErrorKind::InvalidData
        );
    }
}

/// Close codes that may not travel in a Close frame (RFC 6455 section 7.4):
/// our side fails the read and closes with 1002, which tungstenite reads.
#[tokio::test]
async fn an_invalid_close_code_from_tungstenite_is_answered_with_close_1002() {
    for ours in ROLES {
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535] {
            let close = Frame::close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }));
            let (answer, end) = protocol_error(ours, close).await;
            let answer = answer.expect("a Close with a code");
            assert_eq!(u16::from(answer.code), 1002, "{ours:?} on code {code}");
            assert_eq!(
                end.expect_err("the read fails").kind(),
                io::ErrorKind::InvalidData,
                "{ours:?} on code {code}"
            );
        }
    }
}

/// The exact bytes our side puts on the wire, frame by frame, against
/// tungstenite's encoding of the same frame (the same mask key for a client,
/// whose keys are random): data frames of every length class, a write larger
/// than one frame, the Pong answering a Ping, and the Close echoing one.
#[tokio::test]
async fn our_frames_are_byte_for_byte_what_tungstenite_encodes() {
    const WRITES: [usize; 7] = [1, 125, 126, 65_535, 65_536, 65_537, 300_000];
    for ours in ROLES {
        let (mine, mut wire) = tokio::io::duplex(8192);
        let mut stream = WebSocketStream::new(mine, ours, None);
        // What the peer sends: a Ping, then a Close with 1000, masked if it is a client.
        let peer_key = (ours == Role::Server).then_some([0x37, 0xfa, 0x21, 0x3d]);
        let mut incoming = Vec::new();
        for mut frame in [
            Frame::ping(&b"are you there"[..]),
            Frame::close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })),
        ] {
            frame.header_mut().mask = peer_key;
            frame.format(&mut incoming).unwrap();
        }
        let data: Vec<Vec<u8>> = WRITES
            .iter()
            .enumerate()
            .map(|(i, &len)| payload(len, 300 + i as u64))
            .collect();
        let (raw, ()) = tokio::join!(
            async {
                wire.write_all(&incoming).await.unwrap();
                let mut raw = Vec::new();
                wire.read_to_end(&mut raw).await.unwrap();
                raw
            },
            async {
                for d in &data {
                    stream.write_all(d).await.unwrap();
                    stream.flush().await.unwrap();
                }
                let (got, end) = read_to_end(&mut stream).await;
                assert!(got.is_empty() && end.is_ok(), "{ours:?}: {end:?}");
                stream.shutdown().await.unwrap();
            }
        );

        // Walk the wire with tungstenite's header parser; encode the frame that
        // should be there with tungstenite (under the mask key found) and
        // compare the bytes.
        let all_data = data.concat();
        let mut controls = vec![
            Frame::pong(&b"are you there"[..]),
            Frame::close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })),
        ]
        .into_iter();
        let (mut at, mut data_at) = (0, 0);
        while at < raw.len() {
            let mut cursor = Cursor::new(&raw[at..]);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("tungstenite parses our header")
                .expect("a whole header");
            let end = at + cursor.position() as usize + len as usize;
            assert!(end <= raw.len(), "{ours:?}: the frame is whole");
            let mut expected = match header.opcode {
                OpCode::Data(Data::Binary) => {
                    let chunk = &all_data[data_at..(data_at + len as usize).min(all_data.len())];
                    data_at += chunk.len();
                    Frame::message(chunk.to_vec(), OpCode::Data(Data::Binary), true)
                }
                _ => controls.next().expect("no more control frames than due"),
            };
            assert_eq!(
                header.mask.is_some(),
                ours == Role::Client,
                "{ours:?}: a client masks, a server does not"
            );
            expected.header_mut().mask = header.mask;
            let mut encoded = Vec::new();
            expected.format(&mut encoded).unwrap();
            assert_eq!(
                &raw[at..end],
                &encoded[..],
                "{ours:?}: the frame at byte {at}"
            );
            at = end;
        }
        assert_eq!(
            data_at,
            all_data.len(),
            "{ours:?}: every byte written went out"
        );
        assert_eq!(
            controls.next(),
            None,
            "{ours:?}: the Pong and the Close went out"
        );
    }
}
