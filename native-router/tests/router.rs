//! The router end to end: real sockets, rcgen certificates; the library in
//! this process, and the real binary for reload, SIGTERM, `check` and its
//! descriptors.

mod support;

use alpn_protocol::handshake;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;

use alpn_protocol::framing::{Framed, Framing, Role, Subprotocol};
use alpn_tunnel as client;
use alpn_tunnel::tls::client_config;
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::{
    addr_for, backend, config, echo, echo_round_trip, name, proxy_then_echo, proxy_v2, tunnel,
    InProcessRouter, Pki, RouterProcess, DEADLINE, FRAMINGS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

fn digest(bytes: &[u8]) -> Vec<u8> {
    Sha1::digest(bytes).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_framing_carries_a_large_payload_both_ways() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
            echo_backend.addr
        )),
    );
    for f in FRAMINGS {
        let (stream, alpn) = tunnel(&pki, addr_for(&router, f), f, &["echo"], None)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", name(f), router.log()));
        assert_eq!(alpn.as_deref(), Some("echo"), "{}", name(f));
        let sent = payload(8 << 20, 0x1234_5678_9abc_def1 ^ name(f).len() as u64);
        let (total, back) = echo_round_trip(stream, &sent)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", name(f), router.log()));
        assert_eq!(total, 8 << 20, "{}", name(f));
        assert_eq!(back, digest(&sent), "{}: the bytes differ", name(f));
    }
    let metrics = router.get("/metrics");
    assert!(metrics.contains(r#"alpn_router_connections_total{listener="upgrade",framing="alpn-ping",route="echo"} 1"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"alpn_router_connections_total{listener="direct",framing="none",route="echo"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"alpn_router_bytes_total{route="echo",direction="to_client"} 41943040"#),
        "{metrics}"
    );
}

/// Reads until EOF, then answers with how much it got and closes.
fn count_then_answer(mut conn: TcpStream, _: &Mutex<Vec<Vec<u8>>>) {
    let mut all = Vec::new();
    let _ = conn.read_to_end(&mut all);
    let _ = write!(conn, "got {} bytes", all.len());
}

/// Sends a banner and closes its write side, then records what still arrives.
fn banner_then_listen(mut conn: TcpStream, seen: &Mutex<Vec<Vec<u8>>>) {
    let _ = conn.write_all(b"banner\n");
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    seen.lock().unwrap().push(rest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_propagates_both_ways() {
    let pki = Pki::new();
    let counter = backend(count_then_answer);
    let banner = backend(banner_then_listen);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"count\"\nbackend = \"{}\"\n[[route]]\nalpn = \"banner\"\nbackend = \"{}\"\n",
            counter.addr, banner.addr
        )),
    );
    // WebSocket has no half-close: a Close frame ends both directions (PROTOCOL.md 4).
    for f in [None, Some(Framing::Alpn), Some(Framing::AlpnPing)] {
        let (mut s, _) = tunnel(&pki, addr_for(&router, f), f, &["count"], None)
            .await
            .unwrap();
        s.write_all(&payload(100_000, 7)).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        timeout(DEADLINE, s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            answer,
            "got 100000 bytes",
            "{}: the client's EOF must reach the backend, and the answer come back",
            name(f)
        );

        let (mut s, _) = tunnel(&pki, addr_for(&router, f), f, &["banner"], None)
            .await
            .unwrap();
        let mut got = String::new();
        timeout(DEADLINE, s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, "banner\n", "{}", name(f));
        s.write_all(b"after the backend's EOF").await.unwrap();
        s.shutdown().await.unwrap();
    }
    let started = std::time::Instant::now();
    while banner.seen.lock().unwrap().len() < 3 && started.elapsed() < DEADLINE {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let seen = banner.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![b"after the backend's EOF".to_vec(); 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_first_routed_alpn_wins_and_unknown_alpns_get_the_alert() {
    let pki = Pki::new();
    let (a, b) = (backend(echo), backend(echo));
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!("[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\n", a.addr, b.addr)),
    );
    for f in [None, Some(Framing::WebSocket(Subprotocol::Alpn))] {
        let (_, alpn) = tunnel(
            &pki,
            addr_for(&router, f),
            f,
            &["postgresql", "redis"],
            None,
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some("postgresql"));
        let (_, alpn) = tunnel(
            &pki,
            addr_for(&router, f),
            f,
            &["h2", "redis", "postgresql"],
            None,
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some("redis"));
        for offered in [&["h2", "http/1.1"][..], &[]] {
            let err = tunnel(&pki, addr_for(&router, f), f, offered, None)
                .await
                .err()
                .expect("no route must fail");
            assert!(
                err.to_string().contains("NoApplicationProtocol"),
                "{}: {err}",
                name(f)
            );
        }
    }
    router.wait_for("inner TLS: no route for ALPN [\"h2\", \"http/1.1\"]");
    assert!(router.get("/metrics").contains(
        r#"alpn_router_handshake_failures_total{listener="direct",reason="no_route"} 2"#
    ));
}

/// Writes, then reads: TLS 1.3 clients learn of a refused certificate on their first read.
async fn round_trip(
    pki: &Pki,
    router: &InProcessRouter,
    cert: Option<&alpn_tunnel::pem::CertKey>,
) -> std::io::Result<Vec<u8>> {
    let (mut s, _) = tunnel(pki, router.direct, None, &["postgresql"], cert).await?;
    s.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .map_err(std::io::Error::other)??;
    Ok(back.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_refused_and_accepted() {
    let pki = Pki::new();
    let db = backend(echo);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\nclient_ca = \"clients-ca.pem\"\n",
            db.addr
        )),
    );
    let err = round_trip(&pki, &router, None).await.unwrap_err();
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    let err = round_trip(&pki, &router, Some(&pki.stranger))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("UnknownCA") || err.to_string().contains("BadCertificate"),
        "{err}"
    );
    assert_eq!(
        round_trip(&pki, &router, Some(&pki.client)).await.unwrap(),
        b"ping"
    );
    let metrics = router.get("/metrics");
    assert!(
        metrics.contains(r#"reason="client_certificate_missing"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reason="client_certificate_invalid"} 1"#),
        "{metrics}"
    );
}

/// An upgrade as Envoy sends it: with the client address header.
async fn upgrade_as_envoy(pki: &Pki, router: &InProcessRouter, client_addr: &str) {
    let mut tcp = tokio::net::TcpStream::connect(router.upgrade)
        .await
        .unwrap();
    let req = format!(
        "GET /connectionupgrade HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: alpn\r\nX-Alpn-Client-Addr: {client_addr}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let leftover = handshake::read_answer(
        &mut tcp,
        Framing::Alpn,
        None,
        &alpn_protocol::names::Names::default(),
    )
    .await
    .unwrap();
    let framed = Framed::new(
        Framing::Alpn,
        Role::Client,
        tcp,
        leftover,
        std::time::Duration::from_secs(30),
    );
    let config = client_config(std::slice::from_ref(&pki.server_ca), &["pg"], None).unwrap();
    let mut tls = client::inner_tls(framed, config, "router.test")
        .await
        .unwrap();
    tls.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tls.read_exact(&mut one).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_the_real_client_address_in_proxy_v2() {
    let pki = Pki::new();
    let db = backend(proxy_then_echo);
    let routes = format!(
        "[[route]]\nalpn = \"pg\"\nbackend = \"{}\"\nproxy_protocol = true\n",
        db.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    upgrade_as_envoy(&pki, &router, "203.0.113.9").await;
    let (_, _) = tunnel(&pki, router.direct, None, &["pg"], None)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while db.seen.lock().unwrap().len() < 2 && started.elapsed() < DEADLINE {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let seen = db.seen.lock().unwrap().clone();
    let (src, dst) = proxy_v2(&seen[0]).expect("a PROXY v2 header");
    assert_eq!(
        src.ip().to_string(),
        "203.0.113.9",
        "the address Envoy vouched for"
    );
    assert_eq!(dst, router.upgrade);
    let (src, dst) = proxy_v2(&seen[1]).expect("a PROXY v2 header");
    assert_eq!(
        (src.ip().to_string(), dst),
        ("127.0.0.1".to_string(), router.direct),
        "direct: the TCP peer"
    );

    // From a peer that is not trusted, the header is ignored.
    let untrusted = InProcessRouter::start(
        pki.dir.path(),
        &config(&routes).replace("trusted_peers = [\"127.0.0.1/32\"]", "trusted_peers = []"),
    );
    // The echo round trip inside means the backend has recorded the header.
    upgrade_as_envoy(&pki, &untrusted, "203.0.113.9").await;
    let seen = db.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one header per tunnel");
    let (src, dst) = proxy_v2(&seen[2]).unwrap();
    assert_eq!(
        (src.ip().to_string(), dst),
        ("127.0.0.1".to_string(), untrusted.upgrade)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_closes_the_client_promptly_and_logs_the_route() {
    let pki = Pki::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!("[[route]]\nalpn = \"pg\"\nbackend = \"{dead}\"\n")),
    );
    for f in [None, Some(Framing::AlpnPing)] {
        let (mut s, _) = tunnel(&pki, addr_for(&router, f), f, &["pg"], None)
            .await
            .unwrap();
        let mut rest = Vec::new();
        let read = timeout(DEADLINE, s.read_to_end(&mut rest))
            .await
            .expect("the router must close the tunnel");
        // Promptly, and not as a clean end: no close_notify after a failure.
        assert!(
            rest.is_empty()
                && read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{}: {read:?}",
            name(f)
        );
    }
    let line = router.wait_for("backend unreachable");
    assert!(
        line.contains("route=pg") && line.contains(&dead.to_string()) && line.contains("WARN"),
        "{line}"
    );
    assert!(router
        .get("/metrics")
        .contains(r#"alpn_router_backend_failures_total{route="pg"} 2"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_oversized_upgrade_headers_are_cut_off() {
    let pki = Pki::new();
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config("[[route]]\nalpn = \"x\"\nbackend = \"127.0.0.1:9\"\n"),
    );
    let mut slow = TcpStream::connect(router.upgrade).unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    slow.write_all(b"GET /connectionupgrade HTTP/1.1\r\nHost: r\r\n")
        .unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 ")
            && answer.contains("no complete upgrade request within 2s"),
        "{answer}"
    );
    router.wait_for("cut off: no complete upgrade request");

    let mut big = TcpStream::connect(router.upgrade).unwrap();
    big.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = b"GET /connectionupgrade HTTP/1.1\r\nHost: r\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 40_000));
    let _ = big.write_all(&request);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_tunnel_cleanly() {
    let pki = Pki::new();
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config("[[route]]\nalpn = \"x\"\nbackend = \"127.0.0.1:9\"\n"),
    );
    // A WebSocket text frame instead of binary: closed with 1003.
    let mut tcp = tokio::net::TcpStream::connect(router.upgrade)
        .await
        .unwrap();
    let (req, key) = handshake::client_request(
        Framing::WebSocket(Subprotocol::Alpn),
        "r",
        "/connectionupgrade",
        &alpn_protocol::names::Names::default(),
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let leftover = handshake::read_answer(
        &mut tcp,
        Framing::WebSocket(Subprotocol::Alpn),
        key.as_deref(),
        &alpn_protocol::names::Names::default(),
    )
    .await
    .unwrap();
    assert!(leftover.is_empty());
    tcp.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .unwrap();
    let mut back = Vec::new();
    timeout(DEADLINE, tcp.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &back[..4],
        &[0x88, 0x02, 0x03, 0xeb],
        "a Close frame with 1003, then EOF: {back:?}"
    );
    router.wait_for("inner TLS");

    // An alpn-ping frame that promises more than arrives: the tunnel ends, the router goes on.
    let mut tcp = tokio::net::TcpStream::connect(router.upgrade)
        .await
        .unwrap();
    let (req, _) = handshake::client_request(
        Framing::AlpnPing,
        "r",
        "/connectionupgrade",
        &alpn_protocol::names::Names::default(),
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    handshake::read_answer(
        &mut tcp,
        Framing::AlpnPing,
        None,
        &alpn_protocol::names::Names::default(),
    )
    .await
    .unwrap();
    tcp.write_all(b"\0\0\x01\0\x16\x03").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(DEADLINE, tcp.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back.is_empty(), "{back:?}");
    assert!(router.get("/healthz").contains("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_routes_keeps_live_tunnels_and_refuses_bad_files() {
    let pki = Pki::new();
    let (a, b) = (backend(echo), backend(echo));
    let first = config(&format!(
        "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
        a.addr
    ));
    let mut router = RouterProcess::start(pki.dir.path(), &first);
    let (mut live, _) = tunnel(&pki, router.direct, None, &["redis"], None)
        .await
        .unwrap();
    live.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).await.unwrap();

    assert!(
        tunnel(&pki, router.direct, None, &["postgresql"], None)
            .await
            .is_err(),
        "no postgresql route yet"
    );
    router.rewrite(&config(&format!(
        "[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\n",
        b.addr
    )));
    router.signal("HUP");
    router.wait_for("reload: now serving routes [\"postgresql\"]");
    let (_, alpn) = tunnel(&pki, router.direct, None, &["postgresql"], None)
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some("postgresql"));
    live.write_all(b"after!").await.unwrap();
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!", "the live redis tunnel survives the reload");

    router.rewrite("[upgrade]\nlisten = \"127.0.0.1:0\"\nbogus = true\n");
    router.signal("HUP");
    let line = router.wait_for("reload refused");
    assert!(line.contains("upgrade.bogus"), "{line}");
    let (_, alpn) = tunnel(&pki, router.direct, None, &["postgresql"], None)
        .await
        .unwrap();
    assert_eq!(
        alpn.as_deref(),
        Some("postgresql"),
        "the old configuration stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_live_tunnels() {
    let pki = Pki::new();
    let a = backend(echo);
    let mut router = RouterProcess::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
            a.addr
        )),
    );
    let (mut live, _) = tunnel(
        &pki,
        router.upgrade,
        Some(Framing::AlpnPing),
        &["redis"],
        None,
    )
    .await
    .unwrap();
    router.signal("TERM");
    router.wait_for("draining 1 connections");
    // Draining is not dead: the metrics listener answers until the end.
    let ready = router.get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503 ") && ready.ends_with("draining\n"),
        "{ready}"
    );
    assert!(router.get("/healthz").starts_with("HTTP/1.1 200 "));
    assert!(
        tunnel(&pki, router.direct, None, &["redis"], None)
            .await
            .is_err(),
        "no new connections while draining"
    );
    live.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    live.shutdown().await.unwrap();
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await.unwrap();
    drop(live);
    assert!(
        router.wait_exit(),
        "exits cleanly once drained:\n{}",
        router.log()
    );
    assert!(router.log().contains("drained: every connection finished"));
    let line = router
        .log()
        .lines()
        .find(|l| l.contains("ended:"))
        .unwrap()
        .to_string();
    for part in [
        "listener=upgrade",
        "framing=alpn-ping",
        "alpn=redis",
        "route=redis",
        "to_backend=10",
        "to_client=10",
        "ended: both sides closed",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
}

#[test]
fn check_validates_without_serving() {
    let pki = Pki::new();
    let file = pki.path("router.toml");
    std::fs::write(
        &file,
        config("[[route]]\nalpn = \"pg\"\nbackend = \"db:5432\"\nclient_ca = \"clients-ca.pem\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alpn-router"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("route pg -> db:5432, client certificate required"));
    std::fs::write(
        &file,
        config("[[route]]\nalpn = \"pg\"\nbackend = \"db\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alpn-router"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("route[0].backend"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_routes_idle_timeout() {
    let pki = Pki::new();
    let a = backend(echo);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\nidle_timeout = \"1s\"\n",
            a.addr
        )),
    );
    let (mut s, _) = tunnel(&pki, router.direct, None, &["redis"], None)
        .await
        .unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).await.unwrap();
    let mut rest = Vec::new();
    timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed by the router")
        .unwrap();
    let line = router.wait_for("ended: idle for 1s");
    assert!(
        line.contains("route=redis") && line.contains("to_backend=2"),
        "{line}"
    );
}

/// Open file descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_holds_two_descriptors_in_the_router_and_none_once_closed() {
    // Descriptors bound how many tunnels one router holds (20,000 per process
    // is common): a client and a backend connection each, nothing more. The
    // binary, so that /proc counts the router's descriptors alone.
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let router = RouterProcess::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
            echo_backend.addr
        )),
    );
    let before = descriptors(router.pid());
    let mut held = Vec::new();
    for i in 0..40 {
        let f = FRAMINGS[i % FRAMINGS.len()];
        let (mut s, _) = tunnel(&pki, addr_for(&router, f), f, &["echo"], None)
            .await
            .unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        timeout(DEADLINE, s.read_exact(&mut one))
            .await
            .unwrap()
            .unwrap();
        held.push(s);
    }
    let grown = descriptors(router.pid()) - before;
    assert_eq!(grown, 80, "40 tunnels: {grown} more descriptors");
    for mut s in held {
        let _ = s.shutdown().await;
    }
    // Closed tunnels linger (at most LINGER) and then let go of everything.
    let deadline = std::time::Instant::now() + DEADLINE;
    while descriptors(router.pid()) > before && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(descriptors(router.pid()), before, "{}", router.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_summarised_rather_than_logged_one_by_one() {
    let pki = Pki::new();
    let a = backend(echo);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
            a.addr
        )),
    );
    let upgrade = router.upgrade;
    let sent = tokio::task::spawn_blocking(move || {
        for i in 0..50 {
            let mut s = TcpStream::connect(upgrade).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            write!(s, "GET /connectionupgrade HTTP/1.1\r\nHost: r{i}\r\n\r\n").unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        }
    });
    sent.await.unwrap();
    let summary = router.wait_for("more connections refused or cut off in the last");
    assert!(summary.contains("refused 426 x40"), "{summary}");
    let one_by_one = router
        .log()
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains(": refused 426: "))
        .count();
    assert_eq!(
        one_by_one,
        10,
        "a client chose the log's volume:\n{}",
        router.log()
    );
}
