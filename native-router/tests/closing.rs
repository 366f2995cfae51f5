//! How tunnels end, as the client sees it: a slow reader of a pinged tunnel
//! gets every byte and a clean end (the router waits for the client's Close or
//! EOF before it closes, so no late Pong becomes a reset); a backend failure
//! reaches the client as a truncation (no `close_notify`) through every
//! framing; a quiet half-closed tunnel is closed; a client that sends its
//! last bytes after the router's `close_notify` loses none of them to a
//! router ping it has not read (it runs its closing handshake before it
//! closes).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alpn_protocol::framing::{Framed, Framing, Role, Subprotocol};
use alpn_tunnel::{Client, Options, ServerUrl, UpgradeMode};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::{
    addr_for, config, name, router_server_config, tunnel, InProcessRouter, Pki, DEADLINE, FRAMINGS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// How a test backend ends after sending its payload.
#[derive(Clone, Copy)]
enum Then {
    /// FIN, then it reads until the router closes.
    Close,
    /// A reset (SO_LINGER 0).
    Reset,
    /// FIN, then silence with the socket held open.
    HalfCloseAndWait,
}

/// A backend that sends `data` to every connection and then ends as `then`.
async fn sending_backend(data: Vec<u8>, then: Then) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = std::sync::Arc::new(data);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                if conn.write_all(&data).await.is_err() {
                    return;
                }
                match then {
                    Then::Close => {
                        let _ = conn.shutdown().await;
                        let mut sink = Vec::new();
                        let _ = conn.read_to_end(&mut sink).await;
                    }
                    Then::Reset => {
                        let _ = conn.set_zero_linger();
                        drop(conn);
                    }
                    Then::HalfCloseAndWait => {
                        let _ = conn.shutdown().await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    addr
}

fn route_to(addr: SocketAddr) -> String {
    format!("[[route]]\nalpn = \"bulk\"\nbackend = \"{addr}\"\n")
}

/// Reads `stream` to its end at about `rate` bytes a second; returns the bytes
/// read and how the stream ended.
async fn read_slowly(
    stream: &mut (impl AsyncReadExt + Unpin),
    rate: usize,
) -> (Vec<u8>, std::io::Result<()>) {
    let chunk = (rate / 8).max(1);
    let mut got = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => return (got, Err(std::io::Error::other("read timed out"))),
            Ok(Ok(0)) => return (got, Ok(())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Err(e)),
        }
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
}

/// A client of the router behind `lb` (nginx as the ALB) in `framing`.
fn client_behind(pki: &Pki, lb: &LoadBalancer, framing: Framing) -> Client {
    let options = Options {
        sni: Some("router.test".into()),
        ca: Some(vec![pki.server_ca.clone()]),
        outer_ca: Some(vec![lb.cert.der()]),
        upgrade: UpgradeMode::Framing(framing),
        ..Options::default()
    };
    Client::new(
        ServerUrl::parse(&format!("https://{}", lb.addr)).unwrap(),
        "bulk",
        options,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_pinged_websocket_tunnel_gets_every_byte() {
    let pki = Pki::new();
    let data = payload(4 << 20, 11);
    let backend = sending_backend(data.clone(), Then::Close).await;
    // The router waits for the client's Close up to close_timeout: longer
    // than this reader takes.
    let toml = config(&route_to(backend))
        .replace("ping_interval = \"30s\"", "ping_interval = \"200ms\"")
        .replace("[limits]\n", "[limits]\nclose_timeout = \"90s\"\n");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    // Through nginx, whose buffers hold what the slow reader has not read yet.
    let nginx = LoadBalancer::start(Kind::Nginx, router.upgrade, Duration::from_secs(60));
    let client = client_behind(&pki, &nginx, Framing::WebSocket(Subprotocol::AlpnPing));
    let (mut s, _) = client.connect().await.unwrap();
    s.shutdown().await.unwrap();
    // 128 KiB/s: thirty seconds of Pings queued behind the data, each answered.
    let (got, end) = read_slowly(&mut s, 128 << 10).await;
    assert_eq!(got.len(), data.len(), "bytes lost: {end:?}");
    assert_eq!(Sha1::digest(&got), Sha1::digest(&data));
    end.expect("a clean end (close_notify), not a reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_late_still_gets_a_clean_end() {
    // The tunnel ends while the client is not reading; Pings sent earlier wait
    // in its buffer. When it reads on, it answers them: the router must still
    // be reading then (waiting for the client's Close), or the Pongs meet a
    // closed socket and the reset destroys what the client has not read.
    let pki = Pki::new();
    let data = payload(400_000, 14);
    let backend = sending_backend(data.clone(), Then::Close).await;
    let toml =
        config(&route_to(backend)).replace("ping_interval = \"30s\"", "ping_interval = \"100ms\"");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    // Through nginx: what the client has not read waits in nginx's buffers
    // and sockets, which a reset from the router would throw away.
    let nginx = LoadBalancer::start(Kind::Nginx, router.upgrade, Duration::from_secs(60));
    let client = client_behind(&pki, &nginx, Framing::WebSocket(Subprotocol::AlpnPing));
    let (mut s, _) = client.connect().await.unwrap();
    // Pings go out while the tunnel runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.shutdown().await.unwrap();
    router.wait_for("ended: both sides closed");
    // Longer than any fixed linger: the client is busy elsewhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let end = timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("an end");
    assert_eq!(got.len(), data.len(), "bytes lost: {end:?}");
    end.expect("a clean end (close_notify and the closing handshake), not a reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pinged_tunnels_end_without_losing_a_byte() {
    let pki = Pki::new();
    let data = payload(1 << 20, 12);
    let backend = sending_backend(data.clone(), Then::Close).await;
    let toml =
        config(&route_to(backend)).replace("ping_interval = \"30s\"", "ping_interval = \"5ms\"");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    let pki = std::sync::Arc::new(pki);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let pki = pki.clone();
        let addr = router.upgrade;
        let framing = if i % 2 == 0 {
            Framing::WebSocket(Subprotocol::AlpnPing)
        } else {
            Framing::AlpnPing
        };
        tasks.push(tokio::spawn(async move {
            let (mut s, _) = tunnel(&pki, addr, Some(framing), &["bulk"], None)
                .await
                .unwrap();
            s.shutdown().await.unwrap();
            let (got, end) = read_slowly(&mut s, 4 << 20).await;
            (framing, got.len(), end.map_err(|e| e.to_string()))
        }));
    }
    for t in tasks {
        let (framing, len, end) = t.await.unwrap();
        assert_eq!((len, end), (data.len(), Ok(())), "{}", framing.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failure_reaches_the_client_as_a_truncation() {
    let pki = Pki::new();
    let resetting = sending_backend(payload(200_000, 13), Then::Reset).await;
    // A port nothing listens on: the backend refuses.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = format!(
        "{}[[route]]\nalpn = \"refused\"\nbackend = \"{refusing}\"\n",
        route_to(resetting)
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    for alpn in ["bulk", "refused"] {
        for f in FRAMINGS {
            let (mut s, _) = tunnel(&pki, addr_for(&router, f), f, &[alpn], None)
                .await
                .unwrap();
            let mut got = Vec::new();
            let end = timeout(DEADLINE, s.read_to_end(&mut got))
                .await
                .expect("a prompt end");
            let e = end.expect_err(&format!(
                "{alpn} via {}: the client saw a clean end after {} bytes",
                name(f),
                got.len()
            ));
            // No close_notify (TLS: unexpected EOF); over WebSocket the
            // Close 1011 says so first.
            let expected = match f {
                Some(Framing::WebSocket(_)) => (
                    std::io::ErrorKind::ConnectionAborted,
                    "the server closed the tunnel with WebSocket code 1011",
                ),
                _ => (std::io::ErrorKind::UnexpectedEof, "close_notify"),
            };
            assert!(
                e.kind() == expected.0 && e.to_string().contains(expected.1),
                "{alpn} via {}: {e}",
                name(f)
            );
        }
    }
    router.wait_for("route=bulk");
    let log = router.log();
    assert!(log.contains("ended: backend error"), "{log}");
    assert!(
        log.contains("backend unreachable, the client is told of a failure"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_half_closed_tunnel_is_closed() {
    let pki = Pki::new();
    let backend = sending_backend(b"banner".to_vec(), Then::HalfCloseAndWait).await;
    let toml = config(&route_to(backend))
        .replace("[limits]\n", "[limits]\nhalf_closed_timeout = \"1s\"\n");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    let (mut s, _) = tunnel(&pki, router.direct, None, &["bulk"], None)
        .await
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(
        got, b"banner",
        "the backend's half-close reaches the client"
    );
    // The client neither sends nor closes: the router reclaims the tunnel.
    let line = router.wait_for("ended: half-closed and quiet for 1s");
    assert!(
        line.contains("route=bulk") && line.contains("to_client=6"),
        "{line}"
    );
    drop(s);
}

/// The end of a pinged tunnel whose backend finished first (issue 14's soak
/// lost such tunnels): the router's data and `close_notify` come first, then,
/// while the router waits for the rest of the client's data, one of its pings;
/// the client's TLS reads nothing after `close_notify`, so the ping stays
/// unread. The client then sends its data and shuts down. Closing its socket
/// at that point (with the ping unread) makes the kernel send a reset and
/// throw away what has not left the client's socket yet, the end of its data:
/// the client must first run its closing handshake (read on, exchange Close
/// or FIN). A test server stands in for the router (the router's upgrade
/// answer and framing, pings every 50 ms) so that the order is certain: it
/// reads nothing of the client's data until the client has written all of it
/// and called shutdown (one thread: the client runs until it waits).
#[tokio::test]
async fn a_client_that_finishes_after_the_router_loses_nothing_to_an_unread_ping() {
    let pki = Pki::new();
    // More than the router's socket takes while it does not read: the rest
    // waits in the client's socket.
    let data = payload(256 << 10, 21);
    for framing in [
        Framing::AlpnPing,
        Framing::WebSocket(Subprotocol::Alpn),
        Framing::WebSocket(Subprotocol::AlpnPing),
    ] {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(router_server_config(&pki, "bulk")));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (read_end, client_read_end) = tokio::sync::oneshot::channel::<()>();
        let (pinged, router_pinged) = tokio::sync::oneshot::channel::<()>();
        let (written, client_written) = tokio::sync::oneshot::channel::<()>();
        let router = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let accepted =
                alpn_router::accept_upgrade(&mut tcp, &alpn_protocol::names::Names::default())
                    .await
                    .unwrap();
            let in_use = accepted.framing;
            let framed = Framed::new(
                in_use,
                Role::Server,
                tcp,
                accepted.leftover,
                Duration::from_millis(50),
            );
            let mut tls = acceptor.accept(framed).await.unwrap();
            // The backend finished first: its answer, then close_notify.
            tls.write_all(b"the backend's answer").await.unwrap();
            tls.shutdown().await.unwrap();
            client_read_end.await.unwrap();
            // Waiting for the client's data, the router pings.
            let quiet = timeout(Duration::from_millis(300), tls.read(&mut [0u8; 1])).await;
            assert!(quiet.is_err(), "{in_use:?}: the client sent nothing yet");
            pinged.send(()).unwrap();
            client_written.await.unwrap();
            let mut got = Vec::new();
            let read = timeout(DEADLINE, tls.read_to_end(&mut got))
                .await
                .expect("the client's data within the deadline");
            // Then the router's end of the closing handshake.
            let mut framed = tls.into_inner().0;
            let closed = timeout(DEADLINE, std::future::poll_fn(|cx| framed.poll_close(cx))).await;
            (in_use, got, read, closed)
        });
        let options = Options {
            sni: Some("router.test".into()),
            ca: Some(vec![pki.server_ca.clone()]),
            upgrade: UpgradeMode::Framing(framing),
            cache: None,
            ..Options::default()
        };
        let client = Client::new(
            ServerUrl::parse(&format!("http://{addr}")).unwrap(),
            "bulk",
            options,
        )
        .unwrap();
        let (mut s, _) = timeout(DEADLINE, client.connect()).await.unwrap().unwrap();
        let mut answer = Vec::new();
        timeout(DEADLINE, s.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, b"the backend's answer");
        read_end.send(()).unwrap();
        timeout(DEADLINE, router_pinged).await.unwrap().unwrap();
        timeout(DEADLINE, s.write_all(&data))
            .await
            .unwrap()
            .unwrap();
        written.send(()).unwrap();
        timeout(DEADLINE, s.shutdown()).await.unwrap().unwrap();
        drop(s);
        let (in_use, got, read, closed) = timeout(DEADLINE, router).await.unwrap().unwrap();
        assert!(
            in_use.pings_as(Role::Server),
            "{framing:?}: the router pings in {in_use:?}"
        );
        assert_eq!(
            got.len(),
            data.len(),
            "{framing:?} ({in_use:?}): the router got {} of the client's {} bytes ({read:?})",
            got.len(),
            data.len()
        );
        assert_eq!(Sha1::digest(&got), Sha1::digest(&data));
        read.expect("the client's close_notify");
        closed
            .expect("the client's end of the closing handshake within the deadline")
            .expect("the client's Close or FIN, not a reset");
    }
}
