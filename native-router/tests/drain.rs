//! `alpn-router drain`, the Pod's preStop hook, against a real Envoy (the
//! shipped bootstrap with the Pod's health check added) and the real router
//! binary: the health path fails, the drained listener refuses new
//! connections, a tunnel open during the drain keeps flowing and ends
//! cleanly, and the command returns when it has; at the deadline it returns
//! with the tunnel left to the router; a step it cannot do makes it exit 1.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use alpn_protocol::framing::{Framing, Io};
use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::http;
use support::{backend, config, echo, router_command, tunnel, Backend, Logged, Pki, RouterProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Envoy's health path for the load balancer, as the Pod's bootstrap has it.
const HEALTH: &str = "/healthz/envoy";
/// Generous: Envoy, the router and the drain share 2 loaded cores.
const WAIT: Duration = Duration::from_secs(60);

struct Pod {
    pki: Pki,
    router: RouterProcess,
    envoy: Envoy,
    web: SocketAddr,
    _echo: Backend,
}

/// The router (binary) with an echo route, and Envoy in front of it with the
/// Pod's health check and a 1 s drain time (so the drained listener closes
/// soon after `/drain_listeners?graceful`).
fn pod() -> Pod {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = RouterProcess::start(pki.dir.path(), &config(&routes));
    let bootstrap = Bootstrap::shipped("behind-l7.yaml")
        .with_health_check(HEALTH, router.metrics.port())
        .port(8080, 0)
        .port(9001, router.upgrade.port())
        .port(8081, 1);
    let envoy = Envoy::start_with(&bootstrap, &["--drain-time-s", "1"]);
    let web = envoy.listener("web");
    wait_until("the health path to answer 200", || {
        http::get(web, HEALTH).status == 200
    });
    Pod {
        pki,
        router,
        envoy,
        web,
        _echo: echo_backend,
    }
}

impl Pod {
    fn drain(&self, lb_grace: &str, deadline: &str) -> Logged {
        let mut command = router_command(None);
        command
            .arg("drain")
            .arg("--envoy-admin")
            .arg(format!("http://{}", self.envoy.admin))
            .arg("--metrics")
            .arg(format!("http://{}", self.router.metrics))
            .args(["--lb-grace", lb_grace, "--deadline", deadline]);
        Logged::spawn(&mut command)
    }

    async fn tunnel(&self) -> Box<dyn Io> {
        let (stream, alpn) = tunnel(&self.pki, self.web, Some(Framing::Alpn), &["echo"], None)
            .await
            .expect("a tunnel through Envoy");
        assert_eq!(alpn.as_deref(), Some("echo"));
        stream
    }

    fn tunnels_active(&self) -> String {
        let metrics = self.router.get("/metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("alpn_router_tunnels_active "))
            .unwrap_or_else(|| panic!("no tunnels_active in {metrics}"))
            .to_string()
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "waited {WAIT:?} for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `data` and reads the same bytes back.
async fn echoes(stream: &mut Box<dyn Io>, data: &[u8]) {
    stream.write_all(data).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .expect("the echo");
    assert_eq!(back, data);
}

fn exit_of(drain: &mut Logged) -> bool {
    let started = Instant::now();
    while drain.running() {
        assert!(
            started.elapsed() < WAIT,
            "drain still running:\n{}",
            drain.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    drain.wait_exit()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_fails_the_health_path_closes_the_listener_and_waits_for_the_tunnel() {
    let pod = pod();
    let mut open = pod.tunnel().await;
    echoes(&mut open, b"before the drain").await;

    let mut drain = pod.drain("1s", "300s");
    wait_until("the health path to fail", || {
        http::get(pod.web, HEALTH).status == 503
    });
    drain.wait_for("Envoy drains its listeners");
    wait_until("the drained listener to refuse connections", || {
        TcpStream::connect(pod.web).is_err()
    });
    assert_eq!(
        TcpStream::connect(pod.web).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    // The tunnel opened before goes on after its listener closed, and the
    // drain waits for it.
    for round in 0..20 {
        let data = integration_tests::payload(64 * 1024, round);
        echoes(&mut open, &data).await;
    }
    drain.wait_for("1 tunnels left");
    assert!(
        drain.running(),
        "drain returned with a tunnel open:\n{}",
        drain.log()
    );
    assert_eq!(pod.tunnels_active(), "alpn_router_tunnels_active 1");

    // A clean end: close_notify and EOF both ways.
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, open.read_to_end(&mut rest))
        .await
        .expect("EOF in time")
        .expect("a clean end");
    assert!(rest.is_empty());

    assert!(exit_of(&mut drain), "drain failed:\n{}", drain.log());
    let log = drain.log();
    assert!(log.contains("drained: no tunnels left"), "{log}");
    assert_eq!(pod.tunnels_active(), "alpn_router_tunnels_active 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_drain_returns_and_leaves_the_tunnel_to_the_router() {
    let pod = pod();
    let mut open = pod.tunnel().await;
    echoes(&mut open, b"before the drain").await;

    let mut drain = pod.drain("1s", "8s");
    assert!(exit_of(&mut drain), "drain failed:\n{}", drain.log());
    let log = drain.log();
    assert!(
        log.contains("deadline reached") && log.contains("with 1 tunnels left"),
        "{log}"
    );
    // Still flowing: what happens to it now is the router's drain_grace.
    echoes(&mut open, b"after the deadline").await;
    assert_eq!(pod.tunnels_active(), "alpn_router_tunnels_active 1");
}

#[test]
fn a_step_that_cannot_be_done_is_named_and_the_exit_is_1() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = RouterProcess::start(pki.dir.path(), &config(&routes));
    // Nothing listens on port 1 on loopback: Envoy's admin is unreachable.
    let mut command = router_command(None);
    command.args([
        "drain",
        "--envoy-admin",
        "http://127.0.0.1:1",
        "--metrics",
        &format!("http://{}", router.metrics),
        "--lb-grace",
        "0s",
        "--deadline",
        "30s",
    ]);
    let mut drain = Logged::spawn(&mut command);
    assert!(!exit_of(&mut drain), "drain succeeded:\n{}", drain.log());
    let log = drain.log();
    assert!(
        log.contains("could not fail Envoy's health check: http://127.0.0.1:1/healthcheck/fail"),
        "{log}"
    );
    // The router's side was still done: no tunnels, so drained.
    assert!(log.contains("could not drain Envoy's listeners"), "{log}");
    assert!(log.contains("drain incomplete"), "{log}");
    assert!(
        log.contains("exit 1: 2 step(s) of the drain failed"),
        "{log}"
    );

    // A URL that is not the router's metrics is an error at once.
    let mut command = router_command(None);
    command.args([
        "drain",
        "--envoy-admin",
        "http://127.0.0.1:1",
        "--metrics",
        &format!("http://{}/healthz", router.metrics),
        "--lb-grace",
        "0s",
        "--deadline",
        "30s",
    ]);
    let mut drain = Logged::spawn(&mut command);
    assert!(!exit_of(&mut drain));
    assert!(
        drain
            .log()
            .contains("no alpn_router_tunnels_active in the answer"),
        "{}",
        drain.log()
    );
}
