//! How tunnels end, as the client sees it: a slow reader of a pinged tunnel
//! gets every byte and a clean end (the router waits for the client's Close or
//! EOF before it closes, so no late Pong becomes a reset); a backend failure
//! reaches the client as a truncation (no `close_notify`) through every
//! framing; a quiet half-closed tunnel is closed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::{Client, Options, ServerUrl, UpgradeMode};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::{addr_for, config, name, tunnel, InProcessRouter, Pki, DEADLINE, FRAMINGS};
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
