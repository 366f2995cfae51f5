//! Every protocol name renamed at once (PROTOCOL.md: the names in `code` are
//! defaults, configurable in the filter, the router and the client): the full
//! chain — nginx as the ALB, Envoy with the filter, the router, `alpn-tunnel`
//! — moves bytes in every framing with the non-default names, the renamed
//! client-address header carries the client to the backend, and a client
//! whose names disagree with the server's gets an error that says so.

mod support;

use std::io::Write;
use std::net::IpAddr;
use std::process::{Output, Stdio};

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use support::{backend, config, proxy_then_echo, proxy_v2, Backend, Pki, RouterProcess};

/// Where the client connects from, so that its address differs from the load balancer's.
const CLIENT: &str = "127.0.0.2";

/// The names of this deployment, none of them PROTOCOL.md's, as the router's
/// TOML writes them.
const ROUTER_NAMES: &str = r#"
[upgrade.names]
upgrade_paths = ["/tunnel"]
type_tokens = { alpn = "tcp", alpn_ping = "tcp-ping", websocket = "ws" }
allowed_types = ["tcp", "tcp-ping", "ws"]
subprotocol_tokens = { alpn = "raw", alpn_ping = "raw-ping" }
websocket_subprotocols = ["raw", "raw-ping"]
duplicate_upgrade_header = "x-tunnel-type"
client_addr_header = "x-tunnel-client"
"#;

/// The same names in the filter's JSON.
const FILTER_NAMES: &str = r#""upgrade_paths": ["/tunnel"], "type_tokens": {"alpn": "tcp", "alpn_ping": "tcp-ping", "websocket": "ws"}, "allowed_types": ["tcp", "tcp-ping", "ws"], "subprotocol_tokens": {"alpn": "raw", "alpn_ping": "raw-ping"}, "websocket_subprotocols": ["raw", "raw-ping"], "duplicate_upgrade_header": "x-tunnel-type", "client_addr_header": "x-tunnel-client", "#;

/// The same names as `alpn-tunnel` flags (the path is the server URL's).
const CLIENT_NAMES: [&str; 12] = [
    "--alpn-token",
    "tcp",
    "--alpn-ping-token",
    "tcp-ping",
    "--websocket-token",
    "ws",
    "--alpn-subprotocol",
    "raw",
    "--alpn-ping-subprotocol",
    "raw-ping",
    "--duplicate-upgrade-header",
    "x-tunnel-type",
];

/// `text` with `from` replaced by `to`, which must occur exactly `times`
/// times, so that a shipped file that changed shape fails here loudly.
fn renamed(text: String, from: &str, to: &str, times: usize) -> String {
    let n = text.matches(from).count();
    assert_eq!(n, times, "{from:?} occurs {n} times in behind-l7.yaml");
    text.replace(from, to)
}

/// The shipped `behind-l7.yaml` with the deployment's names: the upgrade
/// types Envoy lets through, the path routed to the router, the paths and
/// header of the routes that turn the filter on, Envoy's own 426 text, and the
/// filter's configuration.
fn envoy_bootstrap(router: &RouterProcess) -> Bootstrap {
    let shipped = Bootstrap::shipped("behind-l7.yaml");
    let mut text = shipped.text().to_string();
    text = renamed(text, "upgrade_type: alpn-ping", "upgrade_type: tcp-ping", 1);
    text = renamed(text, "upgrade_type: alpn\n", "upgrade_type: tcp\n", 1);
    text = renamed(text, "upgrade_type: websocket", "upgrade_type: ws", 1);
    text = renamed(text, "/connectionupgrade", "/tunnel", 4);
    text = renamed(text, "(alpn|alpn-ping)", "(tcp|tcp-ping)", 1);
    // The route that turns the filter on for the header, and the bootstrap's
    // inline header of the same name.
    text = renamed(text, "x-alpn-upgrade", "x-tunnel-type", 2);
    text = renamed(text, "alpn, alpn-ping, websocket", "tcp, tcp-ping, ws", 3);
    text = renamed(
        text,
        r#"{"trusted_hops": 1,"#,
        &format!(r#"{{{FILTER_NAMES}"trusted_hops": 1,"#),
        1,
    );
    Bootstrap::from_text("behind-l7-renamed.yaml", text)
        .port(8080, 0)
        .port(9001, router.upgrade.port())
        .port(8081, 1)
}

struct Chain {
    pki: Pki,
    echo: Backend,
    lb: LoadBalancer,
    _router: RouterProcess,
    _envoy: Envoy,
}

fn chain() -> Chain {
    let pki = Pki::new();
    let echo = backend(proxy_then_echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\nproxy_protocol = true\n{ROUTER_NAMES}",
        echo.addr
    );
    let router = RouterProcess::start(pki.dir.path(), &config(&routes));
    let envoy = Envoy::start(&envoy_bootstrap(&router));
    let lb = LoadBalancer::start(
        Kind::Nginx,
        envoy.listener("web"),
        std::time::Duration::from_secs(60),
    );
    Chain {
        pki,
        echo,
        lb,
        _router: router,
        _envoy: envoy,
    }
}

impl Chain {
    /// `alpn-tunnel connect` to the echo route with `upgrade` and `extra`
    /// arguments, `input` on its standard input.
    fn connect(&self, upgrade: &str, extra: &[&str], input: &[u8]) -> Output {
        let mut child = integration_tests::tunnel_command()
            .args([
                "connect",
                "--server",
                &format!("https://{}/tunnel", self.lb.addr),
            ])
            .args(["--alpn", "echo", "--sni", "router.test", "--bind", CLIENT])
            .args(["--upgrade", upgrade, "--timeout", "20s", "--ca"])
            .arg(self.pki.path("router-ca.pem"))
            .arg("--outer-ca")
            .arg(&self.lb.cert.pem)
            .args(extra)
            .env_remove("ALPN_TUNNEL_UPGRADE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("alpn-tunnel starts");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        output
    }
}

#[test]
fn every_name_renamed_moves_bytes_in_every_framing() {
    let c = chain();
    let sent = payload(2 << 20, 11);
    for framing in ["alpn", "alpn-ping", "websocket", "websocket-ping"] {
        let out = c.connect(framing, &CLIENT_NAMES, &sent);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{framing}: {log}");
        assert!(
            out.stdout == sent,
            "{framing}: {} bytes came back, not the {} sent\n{log}",
            out.stdout.len(),
            sent.len()
        );
        // `websocket` offers the pinged subprotocol first; the router takes it.
        let in_use = if framing == "websocket" {
            "websocket-ping"
        } else {
            framing
        };
        assert!(
            log.contains(&format!("via upgrade {in_use}")),
            "{framing}: {log}"
        );
    }
    // The filter wrote the client's address into the renamed header, and the
    // router read it from there.
    let seen = c.echo.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for header in seen {
        let (src, _) = proxy_v2(&header).expect("a PROXY v2 header");
        assert_eq!(src.ip(), CLIENT.parse::<IpAddr>().unwrap());
    }
}

#[test]
fn a_client_with_other_names_is_told_so() {
    let c = chain();
    // PROTOCOL.md's tokens against this server: Envoy refuses the unknown
    // upgrade type with the allowed list, and the client names the flags.
    for framing in ["alpn", "websocket"] {
        let out = c.connect(framing, &[], b"never sent");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{framing}: {log}");
        assert!(
            log.contains("the server answered 426")
                && log.contains("tcp, tcp-ping, ws")
                && log.contains(&format!("this client asked for upgrade type \"{framing}\""))
                && log.contains("--alpn-token"),
            "{framing}: {log}"
        );
        assert!(out.stdout.is_empty());
    }
    // In auto, every framing of the ladder is refused the same way, and the
    // error still says what to check.
    let out = c.connect("auto", &[], b"never sent");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && log.contains("refused in every framing")
            && log.contains(
                "the server takes none of this client's upgrade types, it allows tcp, tcp-ping, ws"
            )
            && log.contains("--alpn-token"),
        "{log}"
    );
    // The right type token, the wrong subprotocols: the filter says which it takes.
    let out = c.connect("websocket", &["--websocket-token", "ws"], b"never sent");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("the server answered 400")
            && log.contains("Sec-WebSocket-Protocol with one of raw, raw-ping")
            && log.contains("--alpn-subprotocol"),
        "{log}"
    );
    // The default path: not this server's upgrade path.
    let out = integration_tests::tunnel_command()
        .args(["connect", "--server", &format!("https://{}", c.lb.addr)])
        .args([
            "--alpn",
            "echo",
            "--sni",
            "router.test",
            "--upgrade",
            "alpn",
        ])
        .args(CLIENT_NAMES)
        .arg("--ca")
        .arg(c.pki.path("router-ca.pem"))
        .arg("--outer-ca")
        .arg(&c.lb.cert.pem)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && log.contains("the server answered 404")
            && log.contains("send ALPN tunnel upgrades to /tunnel")
            && log.contains("check the upgrade path in the server URL"),
        "{log}"
    );
}

#[test]
fn names_the_client_cannot_use_are_refused_naming_the_flag() {
    let out = integration_tests::tunnel_command()
        .args([
            "connect",
            "--server",
            "https://127.0.0.1:1",
            "--alpn",
            "echo",
        ])
        .args(["--alpn-token", "tcp", "--websocket-token", "TCP"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && log.contains("--websocket-token: \"tcp\" is also the token of alpn"),
        "{log}"
    );
}
