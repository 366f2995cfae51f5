//! The whole server side: Envoy (the shipped `behind-l7.yaml` with the filter)
//! in front of the real router. An upgrade through Envoy, the inner TLS handshake
//! with ALPN, an echo, and the client address Envoy derived from
//! X-Forwarded-For arriving at the backend in the PROXY v2 header.

mod support;

use std::time::Duration;

use alpn_router::client;
use alpn_router::framing::{Framing, Subprotocol};
use alpn_router::proxy_protocol;
use alpn_router::tls::client_config;
use integration_tests::envoy::{Bootstrap, Envoy};
use support::{backend, config, proxy_then_echo, Pki, RouterProcess, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_through_envoy_then_inner_tls_then_echo() {
    let pki = Pki::new();
    let db = backend(proxy_then_echo);
    let router = RouterProcess::start(
        pki.dir.path(),
        &config(&format!(
            "[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\nproxy_protocol = true\n",
            db.addr
        )),
    );
    let envoy = Envoy::start(
        &Bootstrap::shipped("behind-l7.yaml")
            .port(8080, 0)
            .port(9001, router.upgrade.port())
            .port(8081, 1),
    );
    let front = envoy.listener("web");
    for (i, framing) in [
        Framing::Alpn,
        Framing::AlpnPing,
        Framing::WebSocket(Subprotocol::Alpn),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tcp = tokio::net::TcpStream::connect(front).await.unwrap();
        // What the load balancer adds: the client's address, last in X-Forwarded-For.
        let (request, key) =
            alpn_router::upgrade::client_request(framing, "tunnel.example", "/connectionupgrade");
        let request = request.replace(
            "\r\n\r\n",
            &format!("\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.{i}\r\n\r\n"),
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let leftover = alpn_router::upgrade::read_answer(&mut tcp, framing, key.as_deref())
            .await
            .unwrap();
        let framed = alpn_router::framing::Framed::new(
            framing,
            alpn_router::framing::Role::Client,
            tcp,
            leftover,
            Duration::from_secs(30),
        );
        let tls_config =
            client_config(std::slice::from_ref(&pki.server_ca), &["postgresql"], None).unwrap();
        let mut tls = client::inner_tls(framed, tls_config, "router.test")
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        let sent: Vec<u8> = (0..256 * 1024u32).map(|n| (n % 251) as u8).collect();
        tls.write_all(&sent).await.unwrap();
        let mut back = vec![0u8; sent.len()];
        timeout(DEADLINE, tls.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == sent, "{}: the echo differs", framing.name());
    }
    let seen = db.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (i, header) in seen.iter().enumerate() {
        let (src, _, _) = proxy_protocol::parse(header).expect("PROXY v2");
        assert_eq!(
            src.ip().to_string(),
            format!("198.51.100.{i}"),
            "the client the load balancer saw"
        );
    }
    let counted = envoy
        .counter("wasmcustom.alpn_upgrade.approved.alpn")
        .unwrap()
        + envoy
            .counter("wasmcustom.alpn_upgrade.approved.websocket")
            .unwrap();
    assert_eq!(counted, 2);
}
