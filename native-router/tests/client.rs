//! The client, `alpn-tunnel` and its library, against the real chain: nginx as
//! the TLS-terminating load balancer (no ALPN passthrough) in front of Envoy with
//! the filter, in front of the router; and against the router's direct port.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::{Client, Options, Path, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::envoy::Envoy;
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::{
    backend, config, echo, echo_round_trip, Backend, InProcessRouter, Logged, Pki, DEADLINE,
};

/// The whole server side, as a user meets it.
struct Chain {
    pki: Pki,
    router: InProcessRouter,
    _envoy: Envoy,
    /// Envoy's plain-HTTP listener (what the load balancer forwards to).
    web: std::net::SocketAddr,
    nginx: LoadBalancer,
    _echo: Backend,
}

fn chain() -> Chain {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{a}\"\n[[route]]\nalpn = \"pg\"\nbackend = \"{a}\"\nclient_ca = \"clients-ca.pem\"\n",
        a = echo_backend.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    let envoy = support::envoy_in_front(router.upgrade);
    let web = envoy.listener("web");
    let nginx = LoadBalancer::start(Kind::Nginx, web, Duration::from_secs(60));
    Chain {
        pki,
        router,
        _envoy: envoy,
        web,
        nginx,
        _echo: echo_backend,
    }
}

impl Chain {
    fn behind_proxy(&self) -> String {
        format!("https://{}", self.nginx.addr)
    }

    fn direct(&self) -> String {
        format!("https://{}", self.router.direct)
    }

    fn options(&self, upgrade: UpgradeMode) -> Options {
        Options {
            sni: Some("router.test".into()),
            ca: Some(vec![self.pki.server_ca.clone()]),
            outer_ca: Some(vec![self.nginx.cert.der()]),
            upgrade,
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                tls: Duration::from_secs(5),
                upgrade: Duration::from_secs(5),
            },
            ..Options::default()
        }
    }

    fn client(&self, server: &str, alpn: &str, upgrade: UpgradeMode) -> Client {
        Client::new(
            ServerUrl::parse(server).unwrap(),
            alpn,
            self.options(upgrade),
        )
        .unwrap()
    }

    /// `alpn-tunnel SUBCOMMAND` with the CAs and the inner name set.
    fn cli(&self, sub: &str, server: &str, alpn: &str) -> Command {
        self.cli_trusting(
            sub,
            server,
            alpn,
            &self.pki.path("router-ca.pem"),
            &self.nginx.cert.pem,
        )
    }

    /// The same, trusting `ca` for the router and `outer_ca` for the load balancer.
    fn cli_trusting(
        &self,
        sub: &str,
        server: &str,
        alpn: &str,
        ca: &std::path::Path,
        outer_ca: &std::path::Path,
    ) -> Command {
        let mut c = integration_tests::tunnel_command();
        c.args([
            sub,
            "--server",
            server,
            "--alpn",
            alpn,
            "--sni",
            "router.test",
            "--timeout",
            "5s",
        ]);
        c.arg("--ca")
            .arg(ca)
            .arg("--outer-ca")
            .arg(outer_ca)
            .env_remove("ALPN_TUNNEL_UPGRADE");
        c
    }
}

fn run(mut c: Command) -> (bool, String, String) {
    let out = c.stdin(Stdio::null()).output().expect("run alpn-tunnel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_picks_direct_at_the_router_and_an_upgrade_behind_the_proxy() {
    let c = chain();
    assert_eq!(
        c.client(&c.direct(), "echo", UpgradeMode::Auto)
            .path()
            .await
            .unwrap(),
        Path::Direct
    );
    assert_eq!(
        c.client(&c.behind_proxy(), "echo", UpgradeMode::Auto)
            .path()
            .await
            .unwrap(),
        Path::Upgrade(Framing::WebSocket(Subprotocol::Alpn)),
        "WebSocket is the default framing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_framing_carries_a_large_payload_through_the_proxy() {
    let c = chain();
    let modes = [
        UpgradeMode::Auto,
        UpgradeMode::Framing(Framing::Alpn),
        UpgradeMode::Framing(Framing::AlpnPing),
        UpgradeMode::Framing(Framing::WebSocket(Subprotocol::Alpn)),
        UpgradeMode::Framing(Framing::WebSocket(Subprotocol::AlpnPing)),
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        let (stream, path) = c
            .client(&c.behind_proxy(), "echo", mode)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let sent = payload(4 << 20, 0xfeed_5eed + i as u64);
        let (total, back) = echo_round_trip(stream, &sent)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (total, back),
            (4 << 20, Sha1::digest(&sent).to_vec()),
            "{path}: the echo differs"
        );
    }
}

#[test]
fn forward_serves_a_local_port_per_service() {
    let c = chain();
    let mut forward = c.cli("forward", &c.behind_proxy(), "echo=127.0.0.1:0");
    forward
        .args(["--alpn", "pg=127.0.0.1:0", "--cert"])
        .arg(c.pki.path("client.pem"))
        .arg("--key")
        .arg(c.pki.path("client.key"));
    let mut process = Logged::spawn(&mut forward);
    let mut local =
        |alpn: &str| process.address_on_line(&format!(" for {alpn} at "), "listening on ");
    for port in [local("echo"), local("pg")] {
        let mut s = TcpStream::connect(port).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let sent = payload(1 << 20, port.port() as u64);
        let mut writer = s.try_clone().unwrap();
        let to_send = sent.clone();
        let t = std::thread::spawn(move || writer.write_all(&to_send).unwrap());
        let mut back = vec![0u8; sent.len()];
        s.read_exact(&mut back).unwrap();
        t.join().unwrap();
        assert!(back == sent, "{port}: the echo differs");
    }
    // `websocket` offers subprotocol alpn-ping first, and the router takes it.
    let line = process.wait_for("via upgrade websocket-ping:");
    assert!(line.contains("bytes sent"), "{line}");
}

/// The library's `forward` in-process: it carries a connection, and on
/// cancellation stops accepting, resets the open local connection (its tunnel
/// did not end cleanly) and returns once its connection tasks are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stops_on_cancellation_and_waits_for_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = chain();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let client = c.client(&c.behind_proxy(), "echo", UpgradeMode::Auto);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(alpn_tunnel::forward(listener, client, shutdown.clone()));
    let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("the echo within the deadline")
        .unwrap();
    assert_eq!(&back, b"hello");
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("forward returns once its connections are done")
        .unwrap();
    let mut rest = [0u8; 1];
    match s.read(&mut rest).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the open local connection must be reset, not {other:?}"),
    }
    assert!(
        tokio::net::TcpStream::connect(local).await.is_err(),
        "the listener is closed"
    );
}

#[test]
fn connect_carries_stdin_and_stdout_as_an_ssh_proxy_command() {
    let c = chain();
    let mut child = c
        .cli("connect", &c.behind_proxy(), "echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sent = payload(256 * 1024, 99);
    let mut stdin = child.stdin.take().unwrap();
    let to_send = sent.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&to_send).unwrap();
        // Dropping stdin is the EOF an SSH client sends when it is done.
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(
        out == sent,
        "stdout differs from stdin ({} of {} bytes)",
        out.len(),
        sent.len()
    );
    assert!(err.contains("via upgrade websocket-ping"), "{err}");
}

#[test]
fn never_behind_the_proxy_fails_with_a_clear_message() {
    let c = chain();
    let mut cmd = c.cli("connect", &c.behind_proxy(), "echo");
    cmd.args(["--upgrade", "never"]);
    let (ok, _, err) = run(cmd);
    assert!(!ok);
    assert!(
        err.contains("an L7 load balancer is in the way: try --upgrade auto"),
        "{err}"
    );
    // The environment variable overrides detection too.
    let mut cmd = c.cli("connect", &c.behind_proxy(), "echo");
    cmd.env("ALPN_TUNNEL_UPGRADE", "never");
    assert!(run(cmd).2.contains("try --upgrade auto"));
}

#[test]
fn probe_names_each_step() {
    let c = chain();
    let (ok, out, err) = run(c.cli("probe", &c.behind_proxy(), "echo"));
    assert!(ok, "{out}{err}");
    for step in [
        "1. ok   TCP connect 127.0.0.1:",
        "TLS offering only \"echo\"",
        "no_application_protocol alert: an L7 load balancer is in the way; an upgrade is needed",
        "outer TLS to the load balancer",
        "ALPN http/1.1",
        "upgrade websocket on /connectionupgrade",
        "upgrade alpn-ping on /connectionupgrade",
        "upgrade alpn on /connectionupgrade",
        "101 Switching Protocols: websocket-ping",
        "inner TLS via upgrade websocket-ping",
        "ALPN echo, certificate CN=router.test",
        "result: tunnels work: an L7 load balancer is in the way: upgrade (websocket-ping)",
    ] {
        assert!(out.contains(step), "{step:?} missing from:\n{out}");
    }
    let (ok, out, _) = run(c.cli("probe", &c.direct(), "echo"));
    assert!(
        ok && out.contains("negotiated \"echo\": no load balancer in the way")
            && out.contains("inner TLS via direct TLS"),
        "{out}"
    );
}

#[test]
fn probe_follows_the_path_a_tunnel_takes() {
    let c = chain();
    // http:// to Envoy: a tunnel goes straight to the upgrade (there is no TLS
    // to detect with), and so does the probe.
    let http = format!("http://{}", c.web);
    let (ok, out, err) = run(c.cli("probe", &http, "echo"));
    assert!(ok, "{out}{err}");
    for step in [
        "an http:// server is reached by an upgrade (no TLS to detect with): upgrade websocket, no detection",
        "101 Switching Protocols: websocket-ping",
        "inner TLS via upgrade websocket-ping",
        "result: tunnels work: an L7 load balancer is in the way: upgrade (websocket-ping)",
    ] {
        assert!(out.contains(step), "{step:?} missing from:\n{out}");
    }
    assert!(!out.contains("TLS offering only"), "no detection:\n{out}");
    // --upgrade never: direct inner TLS only, no detection either.
    let mut never = c.cli("probe", &c.direct(), "echo");
    never.args(["--upgrade", "never"]);
    let (ok, out, err) = run(never);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("--upgrade never: direct TLS, no detection")
            && out.contains("inner TLS via direct TLS")
            && !out.contains("TLS offering only")
            && !out.contains("upgrade websocket on"),
        "{out}"
    );
    // An explicit framing is the only one tried, as a tunnel would.
    let mut framing = c.cli("probe", &c.behind_proxy(), "echo");
    framing.args(["--upgrade", "alpn-ping"]);
    let (ok, out, err) = run(framing);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("--upgrade names the framing: upgrade alpn-ping, no detection")
            && out.contains("inner TLS via upgrade alpn-ping")
            && !out.contains("upgrade websocket on"),
        "{out}"
    );
}

#[test]
fn failures_say_what_went_wrong_and_what_to_do() {
    let c = chain();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cases: Vec<(Command, &str)> = vec![
        (
            c.cli("connect", &format!("https://{closed}"), "echo"),
            "cannot connect to 127.0.0.1:",
        ),
        (
            c.cli_trusting(
                "connect",
                &c.behind_proxy(),
                "echo",
                &c.pki.path("router-ca.pem"),
                &c.pki.path("router-ca.pem"),
            ),
            "the load balancer's certificate is not trusted: pass its CA with --outer-ca FILE",
        ),
        (
            c.cli_trusting(
                "connect",
                &c.behind_proxy(),
                "echo",
                &c.pki.path("clients-ca.pem"),
                &c.nginx.cert.pem,
            ),
            "the router's certificate is not trusted",
        ),
        (
            {
                let mut cmd = c.cli(
                    "connect",
                    &format!("{}/elsewhere", c.behind_proxy()),
                    "echo",
                );
                cmd.args(["--upgrade", "alpn"]);
                cmd
            },
            "the server answered 404: /elsewhere is not an upgrade path",
        ),
        (
            c.cli("connect", &c.behind_proxy(), "pg"),
            "this route requires a client certificate: pass --cert FILE --key FILE",
        ),
        (
            c.cli("connect", &c.behind_proxy(), "nothing-routed"),
            "the router has no route for this ALPN",
        ),
        (
            // At the direct port detection sees no_application_protocol, which
            // a load balancer would also send; http/1.1 refused the same way
            // says there is none, just no route.
            c.cli("connect", &c.direct(), "nothing-routed"),
            "has no route for ALPN \"nothing-routed\": it refused \"nothing-routed\" and then http/1.1 with no_application_protocol, so no load balancer is in the way",
        ),
    ];
    for (cmd, expected) in cases {
        let (ok, _, err) = run(cmd);
        assert!(
            !ok && err.contains(expected),
            "{expected:?} missing from:\n{err}"
        );
    }
}

#[test]
fn a_server_that_never_answers_fails_within_the_deadline() {
    // Accepts connections and reads, but never says a word.
    let silent = backend(|mut conn, _| {
        let mut sink = [0u8; 1024];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    });
    for (server, step) in [
        (
            format!("https://{}", silent.addr),
            "the detection TLS handshake",
        ),
        (format!("http://{}", silent.addr), "the upgrade answer"),
    ] {
        let out = integration_tests::tunnel_command()
            .args([
                "connect",
                "--server",
                &server,
                "--alpn",
                "echo",
                "--timeout",
                "1s",
            ])
            .env_remove("ALPN_TUNNEL_UPGRADE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(&format!(
                    "{step} to {} did not finish within 1s",
                    silent.addr
                )),
            "{err}"
        );
    }
}
