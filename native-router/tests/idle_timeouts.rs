//! Quiet client tunnels survive a load balancer's idle timeout (issue 10 item 1):
//! behind nginx closing connections idle for 3 s, a tunnel in the default mode
//! and in each pinging framing carries bytes after 10 s of silence, against the
//! real chain (Envoy with the filter, the router) and against servers that never
//! ping, so the client's own pings are what keeps them up.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alpn_protocol::framing::{Framed, Framing, Io, Role, Subprotocol};
use alpn_protocol::websocket::accept_key;
use alpn_tunnel::{Client, Options, Path, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use support::{backend, config, echo, router_server_config, InProcessRouter, Pki, DEADLINE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// nginx's idle timeout here (an ALB's is 60 s).
const IDLE: Duration = Duration::from_secs(3);
/// How long each tunnel stays quiet: several idle timeouts.
const QUIET: Duration = Duration::from_secs(10);
/// The client's ping interval, well inside `IDLE`.
const PING: Duration = Duration::from_secs(1);

const WEBSOCKET: Framing = Framing::WebSocket(Subprotocol::Alpn);
const WEBSOCKET_PING: Framing = Framing::WebSocket(Subprotocol::AlpnPing);

/// How a never-pinging test server answers a WebSocket upgrade.
#[derive(Clone, Copy)]
enum Answer {
    /// As the router does ([`alpn_router::accept_upgrade`]): the first offered subprotocol it allows.
    Router,
    /// Always subprotocol `alpn`, as a server whose filter allows only that one.
    PlainAlpn,
}

/// An upgrade server that never pings: answers the upgrade, frames the stream
/// with pings disabled, runs the inner TLS as `router.test` for ALPN `echo`
/// and echoes.
async fn never_pinging_server(pki: &Pki, answer: Answer) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(router_server_config(pki, "echo")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (framing, leftover) = match answer {
                    Answer::Router => {
                        let Ok(accepted) = alpn_router::accept_upgrade(
                            &mut tcp,
                            &alpn_protocol::names::Names::default(),
                        )
                        .await
                        else {
                            return;
                        };
                        (accepted.framing, accepted.leftover)
                    }
                    Answer::PlainAlpn => {
                        let Some(leftover) = answer_websocket_alpn(&mut tcp).await else {
                            return;
                        };
                        (WEBSOCKET, leftover)
                    }
                };
                // Zero: this server never pings.
                let framed = Framed::new(framing, Role::Server, tcp, leftover, Duration::ZERO);
                let Ok(mut tls) = acceptor.accept(framed).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if tls.flush().await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Reads a WebSocket upgrade request and answers 101 with subprotocol `alpn`;
/// returns the bytes after the head.
async fn answer_websocket_alpn<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_string())
    })?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: alpn\r\n\r\n",
        accept_key(&key)
    );
    s.write_all(answer.as_bytes()).await.ok()?;
    Some(head[end..].to_vec())
}

fn client(pki: &Pki, lb: &LoadBalancer, mode: UpgradeMode) -> Client {
    let options = Options {
        sni: Some("router.test".into()),
        ca: Some(vec![pki.server_ca.clone()]),
        outer_ca: Some(vec![lb.cert.der()]),
        upgrade: mode,
        ping_interval: PING,
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            tls: Duration::from_secs(5),
            upgrade: Duration::from_secs(5),
        },
        ..Options::default()
    };
    Client::new(
        ServerUrl::parse(&format!("https://{}", lb.addr)).unwrap(),
        "echo",
        options,
    )
    .unwrap()
}

/// Sends and reads back `data` on `stream`.
async fn echo_once(stream: &mut Box<dyn Io>, data: &[u8]) -> Result<(), String> {
    stream
        .write_all(data)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut back = vec![0u8; data.len()];
    timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .map_err(|_| format!("no echo within {DEADLINE:?}"))?
        .map_err(|e| format!("read: {e}"))?;
    if back != data {
        return Err(format!("echo differs: {back:?}"));
    }
    Ok(())
}

/// Opens a tunnel, echoes, stays quiet for `QUIET` with a read pending (as a
/// tunnel's copy loop always has), then echoes again. Returns the path in use.
async fn quiet_tunnel(client: Client) -> Result<Path, String> {
    let (mut stream, path) = client
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    echo_once(&mut stream, b"before the quiet")
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let mut buf = [0u8; 64];
    match timeout(QUIET, stream.read(&mut buf)).await {
        Err(_) => {} // Quiet all along, as it should be.
        Ok(Ok(0)) => return Err(format!("{path}: the tunnel was closed while quiet")),
        Ok(Ok(n)) => return Err(format!("{path}: {n} unexpected bytes while quiet")),
        Ok(Err(e)) => return Err(format!("{path}: the tunnel was cut while quiet: {e}")),
    }
    echo_once(&mut stream, b"after 10 s of quiet")
        .await
        .map_err(|e| format!("{path}: after {QUIET:?} of quiet: {e}"))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tunnels_survive_idle_timeouts_in_every_pinging_mode() {
    let pki = Pki::new();

    // The real chain: nginx (3 s idle) -> Envoy with the filter -> router, which
    // pings only every 30 s, so within 10 s only the client's pings count.
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    let envoy = support::envoy_in_front(router.upgrade);
    let chain_lb = LoadBalancer::start(Kind::Nginx, envoy.listener("web"), IDLE);
    // Servers that never ping, each behind nginx (3 s idle) directly.
    let router_like = LoadBalancer::start(
        Kind::Nginx,
        never_pinging_server(&pki, Answer::Router).await,
        IDLE,
    );
    let plain_alpn = LoadBalancer::start(
        Kind::Nginx,
        never_pinging_server(&pki, Answer::PlainAlpn).await,
        IDLE,
    );

    let modes = [
        ("auto", UpgradeMode::Auto, WEBSOCKET_PING),
        ("websocket", UpgradeMode::Framing(WEBSOCKET), WEBSOCKET_PING),
        (
            "websocket-ping",
            UpgradeMode::Framing(WEBSOCKET_PING),
            WEBSOCKET_PING,
        ),
        (
            "alpn-ping",
            UpgradeMode::Framing(Framing::AlpnPing),
            Framing::AlpnPing,
        ),
    ];
    let mut cases = Vec::new();
    for (server, lb) in [
        ("the chain", &chain_lb),
        ("a never-pinging router", &router_like),
    ] {
        for (name, mode, in_use) in modes {
            cases.push((
                format!("{name} to {server}"),
                client(&pki, lb, mode),
                in_use,
            ));
        }
    }
    // A server that picks subprotocol alpn: nothing but the client pings.
    for (name, mode) in [
        ("auto", UpgradeMode::Auto),
        ("websocket", UpgradeMode::Framing(WEBSOCKET)),
    ] {
        cases.push((
            format!("{name} to a never-pinging server choosing subprotocol alpn"),
            client(&pki, &plain_alpn, mode),
            WEBSOCKET,
        ));
    }

    let mut tunnels = JoinSet::new();
    for (name, client, in_use) in cases {
        tunnels.spawn(async move { (name, in_use, quiet_tunnel(client).await) });
    }
    let mut failures = Vec::new();
    let deadline = QUIET + DEADLINE * 2;
    while let Some(done) = timeout(deadline, tunnels.join_next())
        .await
        .expect("every tunnel finishes")
    {
        let (name, in_use, result) = done.unwrap();
        match result {
            Ok(path) if path == Path::Upgrade(in_use) => {}
            Ok(path) => failures.push(format!("{name}: ran via {path}, expected {in_use:?}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "quiet tunnels behind a {IDLE:?} idle timeout:\n{}",
        failures.join("\n")
    );
    drop(echo_backend);
}
