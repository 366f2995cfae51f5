//! The whole path as a user runs it, behind each ALB stand-in of
//! `deploy/load-balancers/` (nginx, HAProxy, Envoy): client -> load balancer ->
//! Envoy with the filter -> router -> real backends. `psql` and `redis-cli`
//! through `alpn-tunnel`, 100 MiB each way per framing, keepalives against the
//! load balancer's idle timeout, the web application served meanwhile, the
//! inner ClientHello sent behind the upgrade request, and the real client
//! address at the backend.

mod support;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::{Client, Options, Path, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::databases::{Postgres, Redis};
use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::{payload, stubs};
use sha1::{Digest, Sha1};
use support::{
    backend, config, echo_round_trip, proxy_then_echo, proxy_v2, Backend, InProcessRouter, Logged,
    Pki, DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// The load balancer's idle timeout in the keepalive tests (an ALB's is 60 s).
const IDLE: Duration = Duration::from_secs(3);
/// The idle timeout of the load balancer the bulk transfers go through: an
/// ALB's default. Those check that the bytes arrive whole, not that a loaded
/// machine never pauses a tunnel for 3 s (CI once saw a 100 MiB tunnel on the
/// unpinged `websocket` framing end between two frames, most likely there).
const BULK_IDLE: Duration = Duration::from_secs(60);
/// Where the client connects from, so that its address differs from the load balancer's.
const CLIENT: &str = "127.0.0.2";

struct Setup {
    pki: Pki,
    lb: LoadBalancer,
    /// The same load balancer with [`BULK_IDLE`], in front of the same Envoy.
    bulk_lb: LoadBalancer,
    web: stubs::Stub,
    echo: Backend,
    _router: InProcessRouter,
    _envoy: Envoy,
    _pg: Postgres,
    _redis: Redis,
}

fn setup(kind: Kind) -> Setup {
    let pki = Pki::new();
    let pg = Postgres::start();
    let redis = Redis::start();
    let echo = backend(proxy_then_echo);
    let routes = format!(
        "[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\nclient_ca = \"clients-ca.pem\"\n\
         [[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n\
         [[route]]\nalpn = \"echo\"\nbackend = \"{}\"\nproxy_protocol = true\n",
        pg.addr, redis.addr, echo.addr
    );
    // Pings well inside the load balancer's idle timeout.
    let router = InProcessRouter::start(
        pki.dir.path(),
        &config(&routes).replace("ping_interval = \"30s\"", "ping_interval = \"1s\""),
    );
    let web = stubs::web();
    let envoy = Envoy::start(
        &Bootstrap::shipped("behind-l7.yaml")
            .port(8080, 0)
            .port(9001, router.upgrade.port())
            .port(8081, web.addr.port()),
    );
    let lb = LoadBalancer::start(kind, envoy.listener("web"), IDLE);
    let bulk_lb = LoadBalancer::start(kind, envoy.listener("web"), BULK_IDLE);
    Setup {
        pki,
        lb,
        bulk_lb,
        web,
        echo,
        _router: router,
        _envoy: envoy,
        _pg: pg,
        _redis: redis,
    }
}

impl Setup {
    fn server(&self) -> String {
        url(&self.lb)
    }

    fn client(&self, alpn: &str, upgrade: UpgradeMode) -> Client {
        self.client_through(&self.lb, alpn, upgrade)
    }

    /// A client of the router through `lb`.
    fn client_through(&self, lb: &LoadBalancer, alpn: &str, upgrade: UpgradeMode) -> Client {
        Client::new(
            ServerUrl::parse(&url(lb)).unwrap(),
            alpn,
            self.options(lb, upgrade),
        )
        .unwrap()
    }

    /// The options of a client through `lb`.
    fn options(&self, lb: &LoadBalancer, upgrade: UpgradeMode) -> Options {
        Options {
            sni: Some("router.test".into()),
            ca: Some(vec![self.pki.server_ca.clone()]),
            outer_ca: Some(vec![lb.cert.der()]),
            upgrade,
            ping_interval: Duration::from_secs(1),
            timeouts: Timeouts {
                connect: DEADLINE,
                tls: DEADLINE,
                upgrade: DEADLINE,
            },
            bind: Some(CLIENT.parse().unwrap()),
            ..Options::default()
        }
    }

    /// A plain HTTPS request through the load balancer to the web application.
    fn web_request(&self, path: &str) -> u16 {
        let mut tls = self
            .lb
            .cert
            .connect(self.lb.addr, &["http/1.1"])
            .expect("HTTPS to the load balancer");
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// The client's server URL for `lb`.
fn url(lb: &LoadBalancer) -> String {
    format!("https://{}", lb.addr)
}

/// `psql` and `redis-cli` through one `alpn-tunnel forward` process.
fn real_clients(s: &Setup) {
    let mut forward = integration_tests::tunnel_command();
    forward
        .args([
            "forward",
            "--server",
            &s.server(),
            "--alpn",
            "postgresql=127.0.0.1:0",
            "--alpn",
            "redis=127.0.0.1:0",
        ])
        .args(["--sni", "router.test", "--ca"])
        .arg(s.pki.path("router-ca.pem"))
        .arg("--outer-ca")
        .arg(&s.lb.cert.pem)
        .arg("--cert")
        .arg(s.pki.path("client.pem"))
        .arg("--key")
        .arg(s.pki.path("client.key"))
        .env_remove("ALPN_TUNNEL_UPGRADE");
    let mut forward = Logged::spawn(&mut forward);
    let mut local = |alpn: &str| {
        forward
            .address_on_line(&format!(" for {alpn} at "), "listening on ")
            .port()
    };
    let (pg_port, redis_port) = (local("postgresql"), local("redis"));

    let psql = Command::new("psql")
        .arg(format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres sslmode=disable connect_timeout=20"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "CREATE TABLE numbers (n int)"])
        .args(["-c", "INSERT INTO numbers SELECT generate_series(1, 1000)"])
        .args(["-c", "SELECT sum(n) FROM numbers"])
        .args(["-c", "SELECT inet_client_addr() IS NOT NULL"])
        .output()
        .expect("psql is missing: run `make test`, which installs it");
    let out = String::from_utf8_lossy(&psql.stdout);
    assert!(
        psql.status.success(),
        "psql: {}{}\nalpn-tunnel:\n{}",
        out,
        String::from_utf8_lossy(&psql.stderr),
        forward.log()
    );
    assert!(out.lines().any(|l| l == "500500"), "psql printed {out:?}");

    let redis = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis_port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis(&["SET", "tunnel", "through the load balancer"]), "OK");
    assert_eq!(redis(&["GET", "tunnel"]), "through the load balancer");
    assert_eq!(redis(&["INCRBY", "counter", "41"]), "41");
    let line = forward.wait_for("redis: 127.0.0.1:");
    assert!(line.contains("via upgrade websocket"), "{line}");
}

/// 100 MiB each way through every framing, checked by hash, through the load
/// balancer with an ALB's idle timeout. The payload is made before any tunnel
/// opens, so that no tunnel waits on it.
async fn bulk(s: &Setup) {
    let sent = payload(100 << 20, 77);
    let expect = Sha1::digest(&sent).to_vec();
    for framing in [
        Framing::Alpn,
        Framing::AlpnPing,
        Framing::WebSocket(Subprotocol::Alpn),
        Framing::WebSocket(Subprotocol::AlpnPing),
    ] {
        let (stream, _) = s
            .client_through(&s.bulk_lb, "echo", UpgradeMode::Framing(framing))
            .connect()
            .await
            .unwrap();
        let (total, digest) = echo_round_trip(stream, &sent)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", framing.name()));
        assert_eq!(total, 100 << 20, "{}", framing.name());
        assert_eq!(digest, expect, "{}: the bytes differ", framing.name());
    }
}

/// Quiet tunnels across three idle timeouts: pinged framings stay up, raw
/// `alpn` is cut (so the test can fail); the web application answers meanwhile.
async fn keepalives_and_web(s: &Setup) {
    let mut quiet = Vec::new();
    for framing in [
        Framing::AlpnPing,
        Framing::WebSocket(Subprotocol::AlpnPing),
        Framing::Alpn,
    ] {
        let (mut stream, _) = s
            .client("echo", UpgradeMode::Framing(framing))
            .connect()
            .await
            .unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).await.unwrap();
        quiet.push((framing, stream));
    }
    let waited = tokio::time::Instant::now();
    while waited.elapsed() < IDLE * 3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lb_web = s.web_request("/index.html");
        assert_eq!(lb_web, 200, "the web application must keep answering");
    }
    for (framing, mut stream) in quiet {
        let write = stream.write_all(b"still?").await;
        let mut back = [0u8; 6];
        let read = timeout(DEADLINE, stream.read_exact(&mut back))
            .await
            .expect("an answer or a close in time");
        if framing == Framing::Alpn {
            assert!(
                write.is_err() || read.is_err(),
                "a quiet raw alpn tunnel must be cut by the idle timeout"
            );
        } else {
            write.unwrap_or_else(|e| panic!("{}: {e}", framing.name()));
            read.unwrap_or_else(|e| {
                panic!(
                    "{} did not survive {:?} of quiet: {e}",
                    framing.name(),
                    IDLE * 3
                )
            });
            assert_eq!(&back, b"still?");
        }
    }
}

fn client_addresses(s: &Setup) {
    let seen = s.echo.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for header in seen {
        let (src, _) = proxy_v2(&header).expect("a PROXY v2 header");
        assert_eq!(
            src.ip(),
            CLIENT.parse::<IpAddr>().unwrap(),
            "the backend sees the client, not the load balancer"
        );
    }
    assert!(s
        .web
        .heads()
        .iter()
        .all(|h| h.starts_with("GET /index.html")));
}

/// The inner ClientHello right behind the upgrade request (`--early-hello`):
/// this load balancer passes bytes sent before the 101, so every framing
/// opens that way, and the probe says so.
async fn early_hello(s: &Setup) {
    for framing in [
        Framing::Alpn,
        Framing::AlpnPing,
        Framing::WebSocket(Subprotocol::Alpn),
        Framing::WebSocket(Subprotocol::AlpnPing),
    ] {
        let options = Options {
            early_hello: true,
            ..s.options(&s.lb, UpgradeMode::Framing(framing))
        };
        let (mut stream, path) =
            Client::new(ServerUrl::parse(&s.server()).unwrap(), "echo", options)
                .unwrap()
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{} with the early hello: {e}", framing.name()));
        assert!(matches!(path, Path::Upgrade(_)), "{path}");
        stream.write_all(b"early").await.unwrap();
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"early", "{}", framing.name());
    }
    let client = s.client("echo", UpgradeMode::Auto);
    let report = alpn_tunnel::probe::probe(&client).await;
    let step = report
        .steps
        .iter()
        .find(|st| st.name == "inner ClientHello behind the upgrade request")
        .unwrap_or_else(|| panic!("no early hello step:\n{}", report.render(&client)));
    assert!(
        matches!(&step.outcome, Ok(t) if t.starts_with("carried:")),
        "{}",
        report.render(&client)
    );
}

async fn behind(kind: Kind) {
    let s = setup(kind);
    real_clients(&s);
    early_hello(&s).await;
    bulk(&s).await;
    keepalives_and_web(&s).await;
    client_addresses(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx() {
    behind(Kind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy() {
    behind(Kind::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_envoy() {
    behind(Kind::Envoy).await;
}
