//! The whole server side: Envoy (the shipped `behind-l7.yaml` with the filter)
//! in front of the real router. An upgrade through Envoy, the inner TLS handshake
//! with ALPN, an echo, and the client address Envoy derived from
//! X-Forwarded-For arriving at the backend in the PROXY v2 header: believed from
//! the load balancer's address (`trusted_proxies`), never from anyone else.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel as client;
use alpn_tunnel::tls::client_config;
use integration_tests::envoy::Envoy;
use support::{
    backend, config, proxy_then_echo, proxy_v2, Backend, InProcessRouter, Pki, DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// Upgrades `tcp` (connected to Envoy) with `X-Forwarded-For: xff`, runs the
/// inner TLS handshake for ALPN `postgresql` and checks an echo.
async fn tunnel_and_echo(mut tcp: TcpStream, framing: Framing, xff: &str, pki: &Pki) {
    let (request, key) = alpn_protocol::handshake::client_request(
        framing,
        "tunnel.example",
        "/connectionupgrade",
        &alpn_protocol::names::Names::default(),
    );
    let request = request.replace("\r\n\r\n", &format!("\r\nX-Forwarded-For: {xff}\r\n\r\n"));
    tcp.write_all(request.as_bytes()).await.unwrap();
    let leftover = alpn_protocol::handshake::read_answer(
        &mut tcp,
        framing,
        key.as_deref(),
        &alpn_protocol::names::Names::default(),
    )
    .await
    .unwrap();
    let framed = alpn_protocol::framing::Framed::new(
        framing,
        alpn_protocol::framing::Role::Client,
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

/// Envoy with the shipped `behind-l7.yaml` in front of the router, whose
/// `postgresql` route sends PROXY v2 to a recording echo backend.
struct Chain {
    pki: Pki,
    db: Backend,
    _router: InProcessRouter,
    envoy: Envoy,
}

impl Chain {
    fn start() -> Chain {
        let pki = Pki::new();
        let db = backend(proxy_then_echo);
        let router = InProcessRouter::start(
            pki.dir.path(),
            &config(&format!(
                "[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\nproxy_protocol = true\n",
                db.addr
            )),
        );
        let envoy = support::envoy_in_front(router.upgrade);
        Chain {
            pki,
            db,
            _router: router,
            envoy,
        }
    }
}

/// A TCP connection to `to` from the local address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_through_envoy_then_inner_tls_then_echo() {
    let chain = Chain::start();
    let (pki, db, envoy, front) = (
        &chain.pki,
        &chain.db,
        &chain.envoy,
        chain.envoy.listener("web"),
    );
    for (i, framing) in [
        Framing::Alpn,
        Framing::AlpnPing,
        Framing::WebSocket(Subprotocol::Alpn),
    ]
    .into_iter()
    .enumerate()
    {
        let tcp = tokio::net::TcpStream::connect(front).await.unwrap();
        // What the load balancer adds: the client's address, last in X-Forwarded-For.
        tunnel_and_echo(tcp, framing, &format!("6.6.6.6, 198.51.100.{i}"), pki).await;
    }
    let seen = db.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (i, header) in seen.iter().enumerate() {
        let (src, _) = proxy_v2(header).expect("PROXY v2");
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

/// Issue 10: with the shipped `behind-l7.yaml`, a client that reaches Envoy
/// without the load balancer (from 127.0.0.2, not in `trusted_proxies`) is its
/// own client whatever `X-Forwarded-For` it sends; through the load balancer's
/// address (127.0.0.1, trusted) the entry the balancer appended still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_bypassing_the_load_balancer_cannot_choose_its_address() {
    let chain = Chain::start();
    let (pki, db, front) = (&chain.pki, &chain.db, chain.envoy.listener("web"));
    let direct = connect_from([127, 0, 0, 2], front).await;
    tunnel_and_echo(direct, Framing::Alpn, "7.7.7.7", pki).await;
    let through_lb = connect_from([127, 0, 0, 1], front).await;
    tunnel_and_echo(through_lb, Framing::Alpn, "7.7.7.7", pki).await;

    let seen: Vec<String> = db
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|header| {
            let (src, _) = proxy_v2(header).expect("PROXY v2");
            src.ip().to_string()
        })
        .collect();
    assert_eq!(
        seen,
        ["127.0.0.2", "7.7.7.7"],
        "the direct client's own address, then the address the trusted balancer appended"
    );
}
