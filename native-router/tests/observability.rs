//! What an operator sees of the router: structured logs, metrics while tunnels
//! run, and how a shutdown ends the tunnels still open at its deadline.

mod support;

use std::net::SocketAddr;

use alpn_router::framing::{Framing, Subprotocol};
use serde_json::Value;
use support::{backend, config, echo, router_command, tunnel, Logged, Pki, RouterProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let mut router = RouterProcess::start(
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
