//! What an operator sees of the router: structured logs, metrics while tunnels
//! run, and how a shutdown ends the tunnels still open at its deadline.

mod support;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel as client;
use alpn_tunnel::tls::client_config;
use serde_json::Value;
use support::{
    backend, config, echo, router_command, tunnel, InProcessRouter, Logged, Pki, RouterProcess,
    DEADLINE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The JSON object of one log line.
fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object: {e}: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_each_connections_facts_as_fields() {
    let pki = Pki::new();
    let a = backend(echo);
    let file = pki.path("router.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
            a.addr
        )),
    )
    .unwrap();
    let mut router = Logged::spawn(
        router_command(None)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info"),
    );
    let line = router.wait_for("upgrade listener on ");
    let message = json(&line)["fields"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    let upgrade: SocketAddr = message.rsplit(' ').next().unwrap().parse().unwrap();

    let framing = Framing::WebSocket(Subprotocol::AlpnPing);
    let (mut s, _) = tunnel(&pki, upgrade, Some(framing), &["redis"], None)
        .await
        .unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();

    let line = router.wait_for("ended: both sides closed");
    let event = json(&line);
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["fields"]["to_backend"], 5, "{line}");
    assert_eq!(event["fields"]["to_client"], 5, "{line}");
    assert_eq!(event["fields"]["backend"], a.addr.to_string(), "{line}");
    let span = &event["span"];
    assert_eq!(span["name"], "conn", "{line}");
    assert!(span["id"].is_u64(), "{line}");
    for (field, value) in [
        ("listener", "upgrade"),
        ("framing", "websocket-ping"),
        ("sni", "router.test"),
        ("alpn", "redis"),
        ("route", "redis"),
        ("tls", "full"),
    ] {
        assert_eq!(span[field], value, "{field}: {line}");
    }
    for field in ["peer", "client"] {
        assert!(
            span[field]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1")),
            "{field}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_tunnels_bytes_show_on_metrics_before_it_ends() {
    let pki = Pki::new();
    let a = backend(echo);
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
            a.addr
        )),
    );
    let framing = Framing::WebSocket(Subprotocol::Alpn);
    let (mut s, _) = tunnel(&pki, router.upgrade, Some(framing), &["redis"], None)
        .await
        .unwrap();
    let sent = vec![7u8; 3000];
    s.write_all(&sent).await.unwrap();
    let mut back = vec![0u8; sent.len()];
    s.read_exact(&mut back).await.unwrap();
    // The echo is back, so the router has read the bytes both ways: they
    // count now, while the tunnel is still open.
    let metrics = router.get("/metrics");
    for needle in [
        r#"alpn_router_bytes_total{route="redis",direction="to_backend"} 3000"#,
        r#"alpn_router_bytes_total{route="redis",direction="to_client"} 3000"#,
        "alpn_router_tunnels_active 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    // Counted once: the end of the tunnel adds nothing more.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    router.wait_for("ended: both sides closed");
    let metrics = router.get("/metrics");
    for needle in [
        r#"alpn_router_bytes_total{route="redis",direction="to_backend"} 3000"#,
        r#"alpn_router_bytes_total{route="redis",direction="to_client"} 3000"#,
        "alpn_router_tunnels_active 0",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
}

/// A stream that keeps a copy of every byte read from it.
struct Recorded<S> {
    inner: S,
    read: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read
            .lock()
            .unwrap()
            .extend_from_slice(&buf.filled()[before..]);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sends a line through an echo tunnel and reads it back.
async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_open_at_the_end_of_the_drain_are_closed_cleanly_and_counted() {
    let pki = Pki::new();
    let a = backend(echo);
    let toml = config(&format!(
        "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
        a.addr
    ))
    .replace("drain_grace = \"10s\"", "drain_grace = \"1s\"");
    // The binary: the drain begins at SIGTERM and ends with a clean exit.
    let mut router = RouterProcess::start(pki.dir.path(), &toml);
    // Direct TLS and alpn-ping, and a WebSocket tunnel whose raw bytes are kept.
    let (mut direct, _) = tunnel(&pki, router.direct, None, &["redis"], None)
        .await
        .unwrap();
    let (mut pinged, _) = tunnel(
        &pki,
        router.upgrade,
        Some(Framing::AlpnPing),
        &["redis"],
        None,
    )
    .await
    .unwrap();
    let raw = Arc::new(Mutex::new(Vec::new()));
    let tcp = TcpStream::connect(router.upgrade).await.unwrap();
    let framed = client::upgrade(
        Recorded {
            inner: tcp,
            read: raw.clone(),
        },
        Framing::WebSocket(Subprotocol::Alpn),
        "router.test",
        "/connectionupgrade",
        &alpn_protocol::names::Names::default(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let tls_config = client_config(std::slice::from_ref(&pki.server_ca), &["redis"], None).unwrap();
    let mut ws = client::inner_tls(framed, tls_config, "router.test")
        .await
        .unwrap();
    echo_once(&mut direct).await;
    echo_once(&mut pinged).await;
    echo_once(&mut ws).await;

    router.signal("TERM");
    router.wait_for("draining 3 connections");
    // The tunnels run on through the grace period, then the router closes
    // them: a clean end (close_notify), not a cut.
    for (what, s) in [("direct", &mut direct), ("alpn-ping", &mut pinged)] {
        let mut rest = Vec::new();
        let end = timeout(DEADLINE, s.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{what}: the router must close the tunnel"));
        end.unwrap_or_else(|e| panic!("{what}: not a clean end (close_notify): {e}"));
    }
    let mut rest = Vec::new();
    timeout(DEADLINE, ws.read_to_end(&mut rest))
        .await
        .expect("the router must close the WebSocket tunnel")
        .expect("a clean end (close_notify)");
    // Below the inner TLS, the WebSocket ends with the router's Close 1001.
    let (mut framed, _) = ws.into_inner();
    let end = timeout(DEADLINE, framed.read(&mut [0u8; 64]))
        .await
        .expect("the router's Close");
    assert_eq!(end.unwrap(), 0, "a Close 1001 ends the stream cleanly");
    let raw = raw.lock().unwrap().clone();
    assert!(
        raw.ends_with(&[0x88, 0x02, 0x03, 0xE9]),
        "the last frame from the router is not a Close 1001: {:02x?}",
        &raw[raw.len().saturating_sub(16)..]
    );
    // The router waits for the clients to end their side: it still answers.
    let metrics = router.get("/metrics");
    assert!(
        metrics.contains("alpn_router_tunnels_closed_at_shutdown_total 3"),
        "{metrics}"
    );
    drop((direct, pinged, framed));

    let line = router.wait_for("at the end of the drain grace period (");
    assert!(line.contains("closed 3 tunnels"), "{line}");
    assert!(
        router.wait_exit(),
        "exits cleanly once every connection is over:\n{}",
        router.log()
    );
    let ended = router
        .log()
        .lines()
        .filter(|l| l.contains("ended: closed by the router: the drain grace period is over"))
        .count();
    assert_eq!(ended, 3, "{}", router.log());
}
