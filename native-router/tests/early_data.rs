//! TLS 1.3 early data (0-RTT) on a route with `early_data = true`: a
//! resuming client's first bytes reach the backend with its ClientHello and
//! the answer comes back before the client has sent its `Finished` (one round
//! trip); the tunnel then goes on as any other; the same ClientHello sent
//! again (a replay) resumes nothing and delivers nothing; a route without the
//! key issues no session that allows early data; `alpn-tunnel`'s pool sends a
//! local application's first bytes as early data.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alpn_tunnel::tls::client_config;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use support::{backend, config, InProcessRouter, Logged, Pki, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records each chunk it reads, then echoes it.
fn recording_echo(mut conn: TcpStream, seen: &Mutex<Vec<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.lock().unwrap().push(buf[..n].to_vec());
        if conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

fn route(backend: std::net::SocketAddr, early_data: bool) -> String {
    config(&format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{backend}\"\nearly_data = {early_data}\n"
    ))
}

/// A client configuration for route `echo` with early data enabled.
fn early_client(pki: &Pki) -> Arc<ClientConfig> {
    let mut config =
        (*client_config(std::slice::from_ref(&pki.server_ca), &["echo"], None).unwrap()).clone();
    config.enable_early_data = true;
    Arc::new(config)
}

/// A whole handshake and one echo with `config` (so that its session tickets
/// have arrived); whether it resumed.
fn full_exchange(router: &InProcessRouter, config: &Arc<ClientConfig>) -> bool {
    let mut tcp = connect(router);
    let mut conn = ClientConnection::new(config.clone(), name()).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    // The tickets come after the handshake; one more round trip sees them in.
    tls.write_all(b"again").unwrap();
    tls.read_exact(&mut back).unwrap();
    conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// Tunnels opened with early data, by the router's log.
fn zero_rtt_tunnels(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("tls=resumed_0rtt") && l.contains("tunnel open"))
        .count()
}

fn name() -> ServerName<'static> {
    ServerName::try_from("router.test").unwrap()
}

fn connect(router: &InProcessRouter) -> TcpStream {
    let tcp = TcpStream::connect(router.direct).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp
}

/// Sends what `conn` has to send (the ClientHello and early data) in one
/// write, and returns it.
fn send_hello(conn: &mut ClientConnection, tcp: &mut TcpStream) -> Vec<u8> {
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    tcp.write_all(&hello).unwrap();
    hello
}

/// Reads from `tcp` into `conn` without ever writing, until `conn` has
/// `want` bytes of application data (or the deadline passes).
fn read_without_answering(
    conn: &mut ClientConnection,
    tcp: &mut TcpStream,
    want: usize,
) -> Vec<u8> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        assert!(started.elapsed() < DEADLINE, "got only {got:?}");
        let n = conn.read_tls(tcp).unwrap();
        assert!(n > 0, "the router closed the connection; got {got:?}");
        conn.process_new_packets().unwrap();
        let mut buf = [0u8; 256];
        match conn.reader().read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_is_answered_before_the_clients_finished_and_cannot_be_replayed() {
    let pki = Pki::new();
    let echo = backend(recording_echo);
    let router = InProcessRouter::start(pki.dir.path(), &route(echo.addr, true));
    let client = early_client(&pki);
    tokio::task::spawn_blocking(move || {
        assert!(
            !full_exchange(&router, &client),
            "the first handshake is a full one"
        );

        // Resuming: the first bytes go with the ClientHello, in one write.
        let mut tcp = connect(&router);
        let mut conn = ClientConnection::new(client.clone(), name()).unwrap();
        conn.early_data()
            .expect("the route's session allows early data")
            .write_all(b"ping early")
            .unwrap();
        let hello = send_hello(&mut conn, &mut tcp);
        // The echo arrives although this client has sent nothing since: the
        // router answered before the client's Finished (0.5-RTT data).
        let got = read_without_answering(&mut conn, &mut tcp, 10);
        assert_eq!(got, b"ping early");
        assert!(conn.is_early_data_accepted());
        assert_eq!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        // Then the handshake completes and the tunnel goes on as usual.
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"after the handshake").unwrap();
        let mut back = [0u8; 19];
        tls.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"after the handshake");
        conn.send_close_notify();
        conn.write_tls(&mut tcp).unwrap();
        router.wait_for("tls=resumed_0rtt");

        // A replay of that ClientHello and its early data: the session was
        // taken, so the router offers a full handshake (which the replay
        // cannot finish) and the early data is never read.
        let mut replay = connect(&router);
        replay.write_all(&hello).unwrap();
        let mut answer = [0u8; 4096];
        let n = replay.read(&mut answer).unwrap();
        assert!(n > 0, "the router answers the replayed ClientHello");
        drop(replay);
        router.wait_for("inner TLS: handshake failed");
        let log = router.log();
        let early = echo
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.windows(10).any(|w| w == b"ping early"))
            .count();
        assert_eq!(
            early, 1,
            "the early data reached the backend once, not again from the replay\n{log}"
        );
        assert_eq!(
            zero_rtt_tunnels(&log),
            1,
            "only the first connection resumed\n{log}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_early_data_issues_no_session_that_allows_it() {
    let pki = Pki::new();
    let echo = backend(recording_echo);
    let router = InProcessRouter::start(pki.dir.path(), &route(echo.addr, false));
    let client = early_client(&pki);
    tokio::task::spawn_blocking(move || {
        assert!(!full_exchange(&router, &client));
        let mut conn = ClientConnection::new(client.clone(), name()).unwrap();
        assert!(
            conn.early_data().is_none(),
            "a session from a route without early_data allows none"
        );
        assert!(full_exchange(&router, &client), "it resumes all the same");
        router.wait_for("tls=resumed");
        assert!(!router.log().contains("resumed_0rtt"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_tunnel_sends_the_applications_first_bytes_as_early_data() {
    use alpn_protocol::framing::{Framing, Subprotocol};
    use alpn_tunnel::pool::{Pool, Source};
    use alpn_tunnel::{Client, Options, ServerUrl, UpgradeMode};
    let pki = Pki::new();
    let echo = backend(recording_echo);
    let router = InProcessRouter::start(pki.dir.path(), &route(echo.addr, true));
    let client = Client::new(
        ServerUrl::parse(&format!("http://{}", router.upgrade)).unwrap(),
        "echo",
        Options {
            sni: Some("router.test".into()),
            ca: Some(vec![pki.server_ca.clone()]),
            upgrade: UpgradeMode::Framing(Framing::WebSocket(Subprotocol::Alpn)),
            ..Options::default()
        },
    )
    .unwrap();
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let pool = Pool::start(Arc::new(client), 1, &tasks, stop.clone());
    let mut kinds = Vec::new();
    for i in 0..3 {
        let waited = Instant::now();
        while pool.ready() < 1 {
            assert!(waited.elapsed() < DEADLINE, "the pool did not refill");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = std::sync::atomic::AtomicBool::new(false);
        let first = async {
            asked.store(true, std::sync::atomic::Ordering::Relaxed);
            format!("first {i}").into_bytes()
        };
        let (mut s, _, source) = pool.connect(first).await.unwrap();
        assert!(matches!(source, Source::Pooled { .. }));
        if !asked.load(std::sync::atomic::Ordering::Relaxed) {
            s.write_all(format!("first {i}").as_bytes()).await.unwrap();
        }
        let mut back = [0u8; 7];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, format!("first {i}").as_bytes());
        kinds.push(asked.load(std::sync::atomic::Ordering::Relaxed));
        s.shutdown().await.unwrap();
    }
    // The first tunnel has no session; the later ones resume with early data.
    assert_eq!(kinds, [false, true, true]);
    router.wait_for("tls=resumed_0rtt");
    let started = Instant::now();
    while zero_rtt_tunnels(&router.log()) < 2 && started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let log = router.log();
    assert_eq!(zero_rtt_tunnels(&log), 2, "{log}");
    let metrics = router.get("/metrics");
    for (kind, n) in [("full", 1), ("resumed_0rtt", 2)] {
        let line = format!(
            "alpn_router_inner_handshakes_total{{listener=\"upgrade\",kind=\"{kind}\"}} {n}"
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_route_with_early_data_still_requires_the_certificate() {
    use alpn_tunnel::handshake::inner_tls;
    let pki = Pki::new();
    let echo = backend(recording_echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\nclient_ca = \"clients-ca.pem\"\nearly_data = true\n",
        echo.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    let ca = std::slice::from_ref(&pki.server_ca);
    // Without a certificate: the full handshake fails with certificate_required.
    let tcp = tokio::net::TcpStream::connect(router.direct).await.unwrap();
    let anonymous = client_config(ca, &["echo"], None).unwrap();
    let refused = async {
        let mut tls = inner_tls(tcp, anonymous, "router.test").await?;
        tls.write_all(b"x").await?;
        let mut one = [0u8; 1];
        tls.read_exact(&mut one).await.map(|_| ())
    };
    let error = tokio::time::timeout(DEADLINE, refused)
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.to_string().contains("CertificateRequired"), "{error}");
    router.wait_for("peer sent no certificates");
    let metrics = router.get("/metrics");
    let missing = "alpn_router_handshake_failures_total{listener=\"direct\",reason=\"client_certificate_missing\"} 1";
    assert!(metrics.contains(missing), "{metrics}");
    assert!(
        echo.seen.lock().unwrap().is_empty(),
        "no byte reached the backend"
    );
    // With one: a full handshake, then resumed with early data, whose
    // session keeps the client's identity.
    let mut with_cert = (*client_config(ca, &["echo"], Some(&pki.client)).unwrap()).clone();
    with_cert.enable_early_data = true;
    let with_cert = Arc::new(with_cert);
    let router2 = Arc::new(router);
    let r = router2.clone();
    tokio::task::spawn_blocking(move || {
        assert!(!full_exchange(&r, &with_cert));
        let mut tcp = connect(&r);
        let mut conn = ClientConnection::new(with_cert.clone(), name()).unwrap();
        conn.early_data()
            .expect("the session allows early data")
            .write_all(b"ping early")
            .unwrap();
        send_hello(&mut conn, &mut tcp);
        assert_eq!(
            read_without_answering(&mut conn, &mut tcp, 10),
            b"ping early"
        );
        assert!(conn.is_early_data_accepted());
    })
    .await
    .unwrap();
    router2.wait_for("tls=resumed_0rtt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_began_with_early_data_carries_bulk_bytes_intact() {
    let pki = Pki::new();
    let echo = backend(support::echo);
    let router = InProcessRouter::start(pki.dir.path(), &route(echo.addr, true));
    let client = early_client(&pki);
    let data = integration_tests::payload(8 << 20, 7);
    let expected = {
        use sha1::Digest;
        sha1::Sha1::digest(&data).to_vec()
    };
    for round in 0..2 {
        let tcp = tokio::net::TcpStream::connect(router.direct).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client.clone()).early_data(true);
        let mut tls = connector.connect(name(), tcp).await.unwrap();
        // The first 16 bytes as early data where the session allows it.
        tls.write_all(&data[..16]).await.unwrap();
        tls.flush().await.unwrap();
        let resumed = tls.get_ref().1.is_early_data_accepted();
        assert_eq!(resumed, round == 1, "round {round}: early data accepted");
        // The echo of the early bytes comes back first, then the rest.
        let (total, hash) = support::echo_round_trip(Box::new(tls), &data[16..])
            .await
            .unwrap();
        assert_eq!(total, data.len(), "round {round}");
        assert_eq!(hash, expected, "round {round}: the bytes came back intact");
    }
    router.wait_for("tls=resumed_0rtt");
}

/// Says `hello\n` first (a server that speaks first), then echoes.
fn banner_then_echo(mut conn: TcpStream, seen: &Mutex<Vec<Vec<u8>>>) {
    if conn.write_all(b"hello\n").is_ok() {
        recording_echo(conn, seen);
    }
}

/// `alpn-tunnel forward --pool 1` for `alpn` to the router's upgrade
/// listener, and its local address.
fn pooled_forward(
    pki: &Pki,
    router: &InProcessRouter,
    alpn: &str,
) -> (Logged, std::net::SocketAddr) {
    let mut command = integration_tests::tunnel_command();
    command
        .args(["forward", "--server", &format!("http://{}", router.upgrade)])
        .args(["--alpn", &format!("{alpn}=127.0.0.1:0")])
        .args(["--sni", "router.test", "--timeout", "5s"])
        .args(["--upgrade", "websocket", "--pool", "1", "--ca"])
        .arg(pki.path("router-ca.pem"));
    let mut process = Logged::spawn(&mut command);
    let local = process.address_on_line(&format!(" for {alpn} at "), "listening on ");
    (process, local)
}

/// Waits until the router has opened `n` tunnels with early data.
fn wait_zero_rtt(router: &InProcessRouter, n: usize, forward: &Logged) {
    let started = Instant::now();
    while zero_rtt_tunnels(&router.log()) < n {
        assert!(
            started.elapsed() < DEADLINE,
            "not {n} tunnels with early data\nrouter:\n{}\nforward:\n{}",
            router.log(),
            forward.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_tunnel_forward_pool_uses_early_data_for_clients_and_servers_that_speak_first() {
    let pki = Pki::new();
    let echo = backend(recording_echo);
    let banner = backend(banner_then_echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\nearly_data = true\n\
         [[route]]\nalpn = \"banner\"\nbackend = \"{}\"\nearly_data = true\n",
        echo.addr, banner.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    tokio::task::spawn_blocking(move || {
        // A client that speaks first: its first bytes go with the ClientHello
        // from the second connection on (the first one fetches a session).
        let (forward, local) = pooled_forward(&pki, &router, "echo");
        for i in 0..3u64 {
            let data = integration_tests::payload(64 << 10, i);
            let mut s = TcpStream::connect(local).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.write_all(&data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            assert!(back == data, "connection {i}: the echo differs");
        }
        wait_zero_rtt(&router, 2, &forward);
        // A server that speaks first: the client sends nothing; the banner
        // comes all the same, from the second connection on behind the
        // router's handshake messages.
        let (forward, local) = pooled_forward(&pki, &router, "banner");
        for i in 0..3 {
            let mut s = TcpStream::connect(local).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut hello = [0u8; 6];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(&hello, b"hello\n", "connection {i}");
            s.write_all(b"bye").unwrap();
            let mut bye = [0u8; 3];
            s.read_exact(&mut bye).unwrap();
            assert_eq!(&bye, b"bye");
        }
        wait_zero_rtt(&router, 4, &forward);
    })
    .await
    .unwrap();
}
