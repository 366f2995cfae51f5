//! `alpn-tunnel forward --pool N` against the router binary, with Envoy and
//! the filter in front (and nginx as the load balancer where the load
//! balancer's idle timeout matters): pooled tunnels carry connections with
//! every byte intact, the pool refills, pooled tunnels outlive the handshake
//! deadline and end at the router's pre-open wait (WebSocket Close 1000),
//! the pool recovers from a router restart, the connection cap counts
//! pooled tunnels, and `alpn-tunnel up` keeps the pool its file asks for.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::envoy::Envoy;
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::{backend, config, echo, Backend, Logged, Pki, RouterProcess, DEADLINE};

/// A router configuration: one echo route, pings every second, a 2 s
/// handshake deadline and the pre-open wait `preopen`; `limits` is added to
/// `[limits]`.
fn router_toml(echo: SocketAddr, preopen: &str, limits: &str) -> String {
    config(&format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{echo}\"\n"
    ))
    .replace("ping_interval = \"30s\"", "ping_interval = \"1s\"")
    .replace(
        "handshake_timeout = \"5s\"",
        &format!("handshake_timeout = \"2s\"\npreopen_timeout = \"{preopen}\"\n{limits}"),
    )
}

/// `alpn-tunnel forward --pool POOL` to `server`, and its local address.
fn forward(pki: &Pki, server: &str, pool: usize, outer_ca: Option<&Path>) -> (Logged, SocketAddr) {
    let mut command = integration_tests::tunnel_command();
    command
        .args(["forward", "--server", server, "--alpn", "echo=127.0.0.1:0"])
        .args(["--sni", "router.test", "--timeout", "5s"])
        .args(["--upgrade", "websocket", "--ping-interval", "1s"])
        .args(["--pool", &pool.to_string(), "--ca"])
        .arg(pki.path("router-ca.pem"));
    if let Some(ca) = outer_ca {
        command.arg("--outer-ca").arg(ca);
    }
    let mut process = Logged::spawn(&mut command);
    let local = process.address_on_line(" for echo at ", "listening on ");
    (process, local)
}

/// A metric's value from `/metrics`, 0 when absent.
fn metric(router: &RouterProcess, name: &str) -> f64 {
    router
        .get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the router counts `n` tunnels waiting for their first inner byte.
async fn wait_waiting(router: &RouterProcess, n: usize, forward: &Logged) {
    let started = Instant::now();
    loop {
        let now = metric(router, "alpn_router_preopened_waiting");
        if now == n as f64 {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{now} tunnels waiting, not {n}\nrouter:\n{}\nforward:\n{}",
            router.log(),
            forward.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `data` through the forward's listener `local` (half-closing after
/// it: the echo backend ends at EOF) and returns what came back.
fn exchange(local: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(local).expect("the forward's listener is up");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let data = data.to_vec();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&data);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .expect("the tunnel ends cleanly after the echo");
    sending.join().unwrap();
    back
}

/// 256 KiB through `local`, checked by hash.
fn intact(local: SocketAddr, seed: u64) {
    let sent = payload(256 << 10, seed);
    let back = exchange(local, &sent);
    assert_eq!(
        (back.len(), Sha1::digest(&back)),
        (sent.len(), Sha1::digest(&sent)),
        "the echo through the pooled forward differs"
    );
}

/// The forward's lines for connections carried on a pre-opened tunnel.
fn pooled_lines(forward: &Logged) -> Vec<String> {
    forward
        .log()
        .lines()
        .filter(|l| l.contains(": on a pre-opened tunnel via upgrade websocket"))
        .map(String::from)
        .collect()
}

/// The age a pooled line gives its tunnel ("opened 4.2s ago").
fn age(line: &str) -> f64 {
    let after = line.split("(opened ").nth(1).expect("an age");
    after
        .split('s')
        .next()
        .unwrap()
        .parse()
        .expect("an age in seconds")
}

struct Stack {
    pki: Pki,
    _echo: Backend,
    router: RouterProcess,
    envoy: Envoy,
}

fn stack(preopen: &str, limits: &str) -> Stack {
    let pki = Pki::new();
    let echo = backend(echo);
    let router = RouterProcess::start(pki.dir.path(), &router_toml(echo.addr, preopen, limits));
    let envoy = support::envoy_in_front(router.upgrade);
    Stack {
        pki,
        _echo: echo,
        router,
        envoy,
    }
}

impl Stack {
    fn envoy_url(&self) -> String {
        format!("http://{}", self.envoy.listener("web"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tunnels_outlive_the_handshake_deadline_carry_bytes_intact_and_refill() {
    let s = stack("60s", "");
    // nginx as the ALB, with an idle timeout of 3 s: pings keep the pool alive.
    let nginx = LoadBalancer::start(Kind::Nginx, s.envoy.listener("web"), Duration::from_secs(3));
    let (forward, local) = forward(
        &s.pki,
        &format!("https://{}", nginx.addr),
        2,
        Some(&nginx.cert.pem),
    );
    wait_waiting(&s.router, 2, &forward).await;
    // Past the handshake deadline (2 s) and the load balancer's idle timeout (3 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        metric(&s.router, "alpn_router_preopened_waiting"),
        2.0,
        "{}",
        s.router.log()
    );
    for seed in 0..4 {
        intact(local, seed);
    }
    let pooled = pooled_lines(&forward);
    assert!(pooled.len() >= 2, "{}", forward.log());
    assert!(
        age(&pooled[0]) >= 5.0,
        "the first connection took a tunnel opened before the wait: {}",
        pooled[0]
    );
    // The pool refills what was taken.
    wait_waiting(&s.router, 2, &forward).await;
    let log = s.router.log();
    assert!(!log.contains("inner TLS handshake timed out"), "{log}");
    assert!(!log.contains("ended before any inner TLS byte"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_pooled_tunnels_end_at_the_preopen_wait_and_are_replaced() {
    let mut s = stack("3s", "");
    let (mut forward, local) = forward(&s.pki, &s.envoy_url(), 2, None);
    let line = s
        .router
        .wait_for("ended before any inner TLS byte: no inner TLS byte within");
    assert!(
        line.contains("(3s)") && line.contains("WebSocket Close 1000"),
        "{line}"
    );
    // The client saw the deliberate end (a Close), not a cut, and replaced it.
    let line = forward.wait_for("unused: ");
    assert!(
        line.contains("a pre-opened tunnel via upgrade websocket")
            && line.contains("unused: the server closed it; opening another"),
        "{line}"
    );
    assert!(
        metric(
            &s.router,
            "alpn_router_preopen_ended_total{reason=\"expired\"}"
        ) >= 1.0,
        "{}",
        s.router.get("/metrics")
    );
    wait_waiting(&s.router, 2, &forward).await;
    intact(local, 9);
    assert!(!pooled_lines(&forward).is_empty(), "{}", forward.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_router_restart_the_pool_recovers() {
    let Stack {
        pki,
        _echo,
        router: mut first,
        envoy,
    } = stack("60s", "");
    let (mut forward, local) = forward(&pki, &format!("http://{}", envoy.listener("web")), 2, None);
    wait_waiting(&first, 2, &forward).await;
    intact(local, 1);

    // The restarted router listens where the first one did.
    let same_ports = std::fs::read_to_string(pki.dir.path().join("router.toml"))
        .unwrap()
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", first.upgrade),
            1,
        );
    first.signal("TERM");
    // Pooled tunnels carry nothing to drain: they end at once.
    first.wait_for(
        "ended before any inner TLS byte: the router is shutting down; WebSocket Close 1001",
    );
    first.wait_for("drained: every connection finished");
    assert!(first.wait_exit(), "{}", first.log());
    forward.wait_for("pool: cannot pre-open a tunnel");

    let second = RouterProcess::start(pki.dir.path(), &same_ports);
    assert_eq!(second.upgrade, first.upgrade);
    wait_waiting(&second, 2, &forward).await;
    forward.wait_for("pool: pre-opening works again via upgrade websocket");
    let before = pooled_lines(&forward).len();
    intact(local, 2);
    assert_eq!(
        pooled_lines(&forward).len(),
        before + 1,
        "{}",
        forward.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_pooled_tunnels() {
    let s = stack("60s", "max_connections = 2");
    let (forward, local) = forward(&s.pki, &s.envoy_url(), 2, None);
    wait_waiting(&s.router, 2, &forward).await;
    // Both places are the pool's: another upgrade is turned away at once.
    let mut other = TcpStream::connect(s.router.upgrade).unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        other,
        "GET /connectionupgrade HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: alpn\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = other.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("connection cap"),
        "{answer}"
    );
    assert!(s.router.get("/readyz").contains("at capacity"));
    // A local connection takes a pooled tunnel: it needs no new place.
    intact(local, 3);
    assert_eq!(pooled_lines(&forward).len(), 1, "{}", forward.log());
    // Once it ended its place is free and the pool takes it again.
    wait_waiting(&s.router, 2, &forward).await;
}

/// `pool` in `alpn-tunnel up`'s file is `--pool`: the forward keeps that many
/// tunnels pre-opened and carries a connection on one; a reload that sets it
/// to 0 restarts the forward without a pool, and its pre-opened tunnels end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_the_pool_its_file_asks_for() {
    let s = stack("60s", "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let text = |pool: usize| {
        format!(
            "[servers.envoy]\nurl = \"{}\"\nsni = \"router.test\"\nca = \"{}\"\n\
             upgrade = \"websocket\"\nping_interval = \"1s\"\ntimeout = \"5s\"\n\
             [[forward]]\nserver = \"envoy\"\nalpn = \"echo\"\nlisten = \"127.0.0.1:0\"\npool = {pool}\n",
            s.envoy_url(),
            s.pki.path("router-ca.pem").display()
        )
    };
    std::fs::write(&file, text(2)).unwrap();
    let mut up = Logged::spawn(
        integration_tests::tunnel_command()
            .args(["up", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .env_remove("ALPN_TUNNEL_UPGRADE"),
    );
    let line = up.wait_for("forward echo: listening on ");
    assert!(line.contains(", 2 tunnel(s) pre-opened"), "{line}");
    let local = up.address_on_line("forward echo: listening on ", "listening on ");
    wait_waiting(&s.router, 2, &up).await;
    intact(local, 7);
    assert_eq!(pooled_lines(&up).len(), 1, "{}", up.log());
    wait_waiting(&s.router, 2, &up).await;

    std::fs::write(&file, text(0)).unwrap();
    up.signal("HUP");
    let line = up.wait_for("reloaded: ");
    assert!(line.contains("restarted echo"), "{line}");
    // The restarted forward has no pool: the router's pre-opened tunnels end.
    wait_waiting(&s.router, 0, &up).await;
    // The restarted forward's listener: the last `listening on` line.
    let log = up.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("forward echo: listening on "))
        .unwrap();
    assert!(!line.contains("pre-opened"), "{line}");
    let local: SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("an address");
    intact(local, 8);
    assert_eq!(
        pooled_lines(&up).len(),
        1,
        "no new pooled connection: {}",
        up.log()
    );
}

#[test]
fn the_pool_size_is_bounded_with_a_clear_error() {
    let out = integration_tests::tunnel_command()
        .args([
            "forward",
            "--server",
            "https://lb.example",
            "--alpn",
            "echo",
        ])
        .args(["--listen", "127.0.0.1:0", "--pool", "101"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--pool") && err.contains("more than 100"),
        "{err}"
    );
}
