//! The client behind an HTTP forward proxy (a real tinyproxy on loopback): the
//! outer connection goes through the proxy's `CONNECT`, then nginx (the ALB
//! stand-in), Envoy with the filter and the router, for detection, `probe`,
//! `connect` and `forward` alike. Proxy authentication, `no_proxy`, `--proxy none`
//! and a proxy that refuses the port, as a user would see them.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use alpn_protocol::framing::Framing;
use alpn_tunnel::proxy;
use alpn_tunnel::{Client, Options, Path, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::envoy::Envoy;
use integration_tests::forward_proxy::{ForwardProxy, Settings};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use support::{backend, config, echo, echo_round_trip, Backend, Logged, Pki, RouterProcess};

/// The server side: router, Envoy with the filter, nginx in front.
struct Chain {
    pki: Pki,
    router: RouterProcess,
    _envoy: Envoy,
    /// Envoy's plain-HTTP listener.
    web: std::net::SocketAddr,
    nginx: LoadBalancer,
    _echo: Backend,
}

fn chain() -> Chain {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = RouterProcess::start(pki.dir.path(), &config(&routes));
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
    fn lb(&self) -> String {
        format!("https://{}", self.nginx.addr)
    }

    /// `alpn-tunnel SUB --server server --alpn echo` trusting the test CAs, with
    /// no proxy variable from the test's own environment.
    fn cli(&self, sub: &str, server: &str) -> Command {
        let mut c = integration_tests::tunnel_command();
        c.args([sub, "--server", server, "--alpn"])
            .arg(if sub == "forward" {
                "echo=127.0.0.1:0"
            } else {
                "echo"
            })
            .args(["--sni", "router.test", "--timeout", "5s", "--ca"])
            .arg(self.pki.path("router-ca.pem"))
            .arg("--outer-ca")
            .arg(&self.nginx.cert.pem)
            .env_remove("ALPN_TUNNEL_UPGRADE");
        c
    }

    /// A library client of `server` through `proxy`, detecting the path.
    fn client(&self, server: &str, proxy: &ForwardProxy) -> Client {
        let server = ServerUrl::parse(server).unwrap();
        let proxy = proxy::choose(&server, Some(&proxy.url()), None, |_| None).unwrap();
        let options = Options {
            sni: Some("router.test".into()),
            ca: Some(vec![self.pki.server_ca.clone()]),
            outer_ca: Some(vec![self.nginx.cert.der()]),
            upgrade: UpgradeMode::Auto,
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                tls: Duration::from_secs(5),
                upgrade: Duration::from_secs(5),
            },
            proxy,
            ..Options::default()
        };
        Client::new(server, "echo", options).unwrap()
    }
}

/// Runs `alpn-tunnel connect`, sends `sent` on its stdin; whether it succeeded,
/// what came back on stdout, and its log.
fn connect(mut cmd: Command, sent: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run alpn-tunnel");
    let mut stdin = child.stdin.take().unwrap();
    let to_send = sent.to_vec();
    // Dropping stdin at the end is the EOF that ends the tunnel.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&to_send);
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
    (status.success(), out, err)
}

fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run alpn-tunnel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_tunnel_goes_through_the_proxy_and_nginx_to_the_router() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings::default());
    let sent = payload(256 * 1024, 7);
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", proxy.url());
    let (ok, out, err) = connect(cmd, &sent);
    assert!(ok, "{err}");
    assert!(
        out == sent,
        "the echo differs ({} bytes back)\n{err}",
        out.len()
    );
    assert!(
        err.contains(&format!(
            "through the proxy {} (from HTTPS_PROXY)",
            proxy.url()
        )),
        "{err}"
    );
    // Detection's test handshake and the tunnel both asked the proxy.
    let target = c.nginx.addr.to_string();
    assert!(
        proxy.connects_to(&target) >= 2,
        "CONNECT {target} twice expected:\n{}",
        proxy.log()
    );
}

#[test]
fn the_proxy_flag_overrides_the_environment_for_forward() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings::default());
    let mut forward = c.cli("forward", &c.lb());
    // A dead proxy in the environment: the flag must win.
    forward
        .env("https_proxy", "http://127.0.0.1:1")
        .args(["--proxy", &proxy.url()]);
    let mut process = Logged::spawn(&mut forward);
    let local = process.address_after("listening on ");
    let mut conn = std::net::TcpStream::connect(local).unwrap();
    conn.set_read_timeout(Some(support::DEADLINE)).unwrap();
    conn.write_all(b"through the proxy").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"through the proxy", "{}", process.log());
    assert!(
        process.log().contains("(from --proxy)"),
        "{}",
        process.log()
    );
    assert!(
        proxy.connects_to(&c.nginx.addr.to_string()) >= 1,
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_goes_through_the_proxy_too() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings::default());
    // The router's direct port through the proxy: no load balancer in the way.
    let direct = c.client(&format!("https://{}", c.router.direct), &proxy);
    assert_eq!(direct.path().await.unwrap(), Path::Direct);
    // nginx through the proxy: an upgrade, and a tunnel that carries bytes.
    let behind = c.client(&c.lb(), &proxy);
    let (stream, path) = behind.connect().await.unwrap();
    assert!(
        matches!(path, Path::Upgrade(Framing::WebSocket(_))),
        "{path}"
    );
    let sent = payload(1 << 20, 11);
    let (n, _) = echo_round_trip(stream, &sent).await.unwrap();
    assert_eq!(n, sent.len());
    assert_eq!(
        proxy.connects_to(&c.router.direct.to_string()),
        1,
        "{}",
        proxy.log()
    );
    assert!(
        proxy.connects_to(&c.nginx.addr.to_string()) >= 2,
        "{}",
        proxy.log()
    );
}

#[test]
fn an_http_server_goes_through_http_proxy_not_http_proxy_in_capitals() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings::default());
    let server = format!("http://{}", c.web);
    let mut cmd = c.cli("connect", &server);
    cmd.env("http_proxy", proxy.url())
        .env("HTTPS_PROXY", "http://127.0.0.1:1");
    let (ok, out, err) = connect(cmd, b"plain http");
    assert!(ok && out == b"plain http", "{err}");
    assert_eq!(proxy.connects_to(&c.web.to_string()), 1, "{}", proxy.log());
    // HTTP_PROXY alone is ignored (as curl does): the tunnel goes direct.
    let mut cmd = c.cli("connect", &server);
    cmd.env("HTTP_PROXY", "http://127.0.0.1:1");
    let (ok, out, err) = connect(cmd, b"direct");
    assert!(ok && out == b"direct", "{err}");
}

#[test]
fn probe_shows_the_proxy_as_its_own_step() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings::default());
    let mut cmd = c.cli("probe", &c.lb());
    cmd.env("ALL_PROXY", proxy.url());
    let (ok, out, err) = run(cmd);
    assert!(ok, "{out}{err}");
    for step in [
        format!(" 1. ok   TCP connect to the proxy {}", proxy.addr),
        format!("connected: {} (from ALL_PROXY)", proxy.url()),
        format!(" 2. ok   proxy CONNECT {}", c.nginx.addr),
        format!(
            "200 Connection established: the proxy opened a tunnel to {}",
            c.nginx.addr
        ),
        "no_application_protocol alert: an L7 load balancer is in the way".into(),
        "inner TLS via upgrade websocket-ping".into(),
        "result: tunnels work".into(),
    ] {
        assert!(out.contains(&step), "{step:?} missing from:\n{out}");
    }
    // Every later step (detection, outer TLS, upgrades, inner TLS) went through it too.
    let connects = proxy.connects_to(&c.nginx.addr.to_string());
    assert!(connects >= 4, "{connects} CONNECTs:\n{}", proxy.log());
}

#[test]
fn proxy_authentication_required_right_and_wrong() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings {
        auth: Some(("alice".into(), "s3cret".into())),
        ..Settings::default()
    });
    let url = proxy.url();
    let with_auth = format!("http://alice:s3cret@{}", proxy.addr);
    let wrong = format!("http://alice:guess@{}", proxy.addr);

    // No credentials: the proxy's 407, named as the proxy's.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", &url);
    let (ok, _, err) = connect(cmd, b"x");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the proxy {url} (from HTTPS_PROXY) refused CONNECT to {}: 407 Proxy Authentication Required (the proxy requires authentication",
            c.nginx.addr
        )),
        "{err}"
    );

    // Wrong credentials: refused (tinyproxy says 401), and the password is not shown.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", &wrong);
    let (ok, _, err) = connect(cmd, b"x");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the proxy {url} (from HTTPS_PROXY) refused CONNECT"
        )) && err.contains("(the proxy did not accept the credentials)"),
        "{err}"
    );
    assert!(!err.contains("guess"), "the password leaked:\n{err}");

    // Right credentials in the URL.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", &with_auth);
    let (ok, out, err) = connect(cmd, b"in the url");
    assert!(ok && out == b"in the url", "{err}");
    assert!(!err.contains("s3cret"), "the password leaked:\n{err}");

    // Right credentials from --proxy-auth, over the URL's wrong ones.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", &wrong)
        .args(["--proxy-auth", "alice:s3cret"]);
    let (ok, out, err) = connect(cmd, b"from the flag");
    assert!(ok && out == b"from the flag", "{err}");

    // And from the environment variable of the flag.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("ALPN_TUNNEL_PROXY", &url)
        .env("ALPN_TUNNEL_PROXY_AUTH", "alice:s3cret");
    let (ok, out, err) = connect(cmd, b"from the env");
    assert!(ok && out == b"from the env", "{err}");
    assert!(!err.contains("s3cret"), "the password leaked:\n{err}");
}

#[test]
fn no_proxy_and_proxy_none_bypass_the_proxy() {
    let c = chain();
    // A proxy that would refuse every CONNECT (it wants credentials).
    let proxy = ForwardProxy::start(&Settings {
        auth: Some(("alice".into(), "s3cret".into())),
        ..Settings::default()
    });
    for no_proxy in [
        "127.0.0.1",
        "127.0.0.0/8",
        &format!("127.0.0.1:{}", c.nginx.addr.port()),
        "*",
    ] {
        let mut cmd = c.cli("connect", &c.lb());
        cmd.env("HTTPS_PROXY", proxy.url())
            .env("NO_PROXY", no_proxy);
        let (ok, out, err) = connect(cmd, b"bypass");
        assert!(ok && out == b"bypass", "NO_PROXY={no_proxy}: {err}");
    }
    // --proxy none: the environment's proxy is not used.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", proxy.url())
        .args(["--proxy", "none"]);
    let (ok, out, err) = connect(cmd, b"none");
    assert!(ok && out == b"none", "{err}");
    assert_eq!(
        proxy.connects_to(&c.nginx.addr.to_string()),
        0,
        "{}",
        proxy.log()
    );
    // An entry for another port does not exempt this one: the proxy refuses.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("HTTPS_PROXY", proxy.url())
        .env("no_proxy", "127.0.0.1:1");
    let (ok, _, err) = connect(cmd, b"x");
    assert!(
        !ok && err.contains("407 Proxy Authentication Required"),
        "{err}"
    );
}

#[test]
fn a_proxy_that_refuses_connect_to_the_port_is_reported_as_the_proxys() {
    let c = chain();
    let proxy = ForwardProxy::start(&Settings {
        connect_ports: vec![443],
        ..Settings::default()
    });
    let mut cmd = c.cli("connect", &c.lb());
    cmd.args(["--proxy", &proxy.url()]);
    let (ok, _, err) = connect(cmd, b"x");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the proxy {} (from --proxy) refused CONNECT to {}: 403 Access violation (the proxy does not allow this destination or port",
            proxy.url(),
            c.nginx.addr
        )),
        "{err}"
    );
    // The probe stops at the proxy's step, with the same words.
    let mut cmd = c.cli("probe", &c.lb());
    cmd.args(["--proxy", &proxy.url()]);
    let (ok, out, _) = run(cmd);
    assert!(!ok);
    assert!(
        out.contains(&format!(" 2. FAIL proxy CONNECT {}", c.nginx.addr))
            && out.contains("403 Access violation")
            && out.contains("result: no tunnel can be opened"),
        "{out}"
    );
}

#[test]
fn a_dead_proxy_is_named_as_the_proxy() {
    let c = chain();
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("https_proxy", "http://127.0.0.1:1");
    let (ok, _, err) = connect(cmd, b"x");
    assert!(!ok);
    assert!(
        err.contains("cannot connect to the proxy http://127.0.0.1:1 (from https_proxy)"),
        "{err}"
    );
    // A malformed proxy setting fails at start, naming the variable.
    let mut cmd = c.cli("connect", &c.lb());
    cmd.env("https_proxy", "socks5://127.0.0.1:1080");
    let (ok, _, err) = connect(cmd, b"x");
    assert!(
        !ok && err.contains("https_proxy: proxy scheme \"socks5\" is not supported"),
        "{err}"
    );
}

#[test]
fn a_proxy_that_never_answers_connect_meets_the_deadline() {
    let c = chain();
    // Accepts the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || silent.accept().map(|(conn, _)| conn));
    let mut cmd = c.cli("connect", &c.lb());
    cmd.args(["--proxy", &format!("http://{addr}")]);
    let (ok, _, err) = connect(cmd, b"x");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the answer to CONNECT to the proxy http://{addr} (from --proxy) did not finish within 5s"
        )),
        "{err}"
    );
    drop(holder.join());
}
