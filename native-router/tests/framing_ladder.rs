//! The framing ladder (PROTOCOL.md section 6) against middleboxes that pass only
//! some upgrades: nginx in front of Envoy with the filter and the router,
//! configured like a WAF that refuses `Upgrade: websocket`, or everything but
//! it, or closes the connection instead of answering. `auto` climbs websocket,
//! alpn-ping, alpn on a refusal that says "not this framing" (400, 403, 426, a
//! close before the answer, a wrong 101), never on one that another framing
//! would not change (a rate limit); an explicit framing never climbs. What a
//! user sees: the tunnel works, and the log says which framing and why.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::envoy::Envoy;
use integration_tests::load_balancer::LoadBalancer;
use support::{backend, config, echo, Backend, Pki, RouterProcess};

/// A WAF that refuses WebSocket upgrades with 403.
const REFUSE_WEBSOCKET: &str = "if ($http_upgrade ~* websocket) { return 403; }";
/// A firewall that drops WebSocket upgrades: nginx's 444 closes without an answer.
const CLOSE_ON_WEBSOCKET: &str = "if ($http_upgrade ~* websocket) { return 444; }";
/// A WAF that passes only WebSocket upgrades (plain requests pass too), like
/// GCP's load balancer or Cloudflare.
const ONLY_WEBSOCKET: &str = r#"set $refused "";
if ($http_upgrade) { set $refused "upgrade"; }
if ($http_upgrade ~* ^websocket$) { set $refused ""; }
if ($refused) { return 403; }"#;
/// A rate limit on WebSocket upgrades: another framing would fare no better.
const RATE_LIMIT_WEBSOCKET: &str = "if ($http_upgrade ~* websocket) { return 429; }";
/// A WAF that refuses every upgrade.
const REFUSE_ALL: &str = "if ($http_upgrade) { return 403; }";

/// The router behind Envoy with the filter, and a WAF in front for each rule.
struct Chain {
    pki: Pki,
    _router: RouterProcess,
    _envoy: Envoy,
    wafs: Vec<LoadBalancer>,
    _echo: Backend,
}

fn chain(rules: &[&str]) -> Chain {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = RouterProcess::start(pki.dir.path(), &config(&routes));
    let envoy = support::envoy_in_front(router.upgrade);
    let web = envoy.listener("web");
    let wafs = rules
        .iter()
        .map(|rule| LoadBalancer::nginx_with_rule(web, Duration::from_secs(60), rule))
        .collect();
    Chain {
        pki,
        _router: router,
        _envoy: envoy,
        wafs,
        _echo: echo_backend,
    }
}

impl Chain {
    /// `alpn-tunnel connect` to WAF `i` for `echo`, with `--upgrade upgrade`.
    fn connect(&self, i: usize, upgrade: &str) -> Command {
        let waf = &self.wafs[i];
        let mut c = integration_tests::tunnel_command();
        c.args(["connect", "--server", &format!("https://{}", waf.addr)])
            .args(["--alpn", "echo", "--sni", "router.test", "--timeout", "5s"])
            .args(["--upgrade", upgrade])
            .arg("--ca")
            .arg(self.pki.path("router-ca.pem"))
            .arg("--outer-ca")
            .arg(&waf.cert.pem)
            .env("RUST_LOG", "info");
        c
    }
}

/// Runs `connect` with a line on stdin: whether it succeeded, whether the line
/// came back through the echo, and the log.
fn run(mut c: Command) -> (bool, bool, String) {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run alpn-tunnel");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the ladder\n")
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let ok = child.wait().unwrap().success();
    (ok, out == b"through the ladder\n", err)
}

#[test]
fn auto_climbs_past_middleboxes_that_pass_only_some_upgrades() {
    let c = chain(&[REFUSE_WEBSOCKET, CLOSE_ON_WEBSOCKET, ONLY_WEBSOCKET]);

    // A WAF that refuses WebSocket with 403: alpn-ping is next, and works.
    let (ok, echoed, err) = run(c.connect(0, "auto"));
    assert!(ok && echoed, "{err}");
    for line in [
        "upgrade websocket refused (the server answered 403",
        "a 403, as from a WAF that passes only some upgrade types, which says not this framing: trying alpn-ping",
        "chose framing alpn-ping: websocket was refused (the server answered 403",
        "alpn-ping was accepted",
        "via upgrade alpn-ping",
    ] {
        assert!(err.contains(line), "{line:?} missing from:\n{err}");
    }

    // A firewall that closes instead of answering: the same climb, and why.
    let (ok, echoed, err) = run(c.connect(1, "auto"));
    assert!(ok && echoed, "{err}");
    assert!(
        err.contains("the connection was closed before the answer, which says not this framing: trying alpn-ping")
            && err.contains("via upgrade alpn-ping"),
        "{err}"
    );

    // A WAF that passes only WebSocket: the first rung works, nothing climbs.
    let (ok, echoed, err) = run(c.connect(2, "auto"));
    assert!(ok && echoed, "{err}");
    assert!(
        err.contains("via upgrade websocket-ping") && !err.contains("refused"),
        "{err}"
    );

    // An explicit framing never falls back, whatever the refusal.
    for (i, framing, refusal) in [
        (0, "websocket", "the server answered 403"),
        (1, "websocket", "failed: i/o: peer closed connection"),
        (2, "alpn-ping", "the server answered 403"),
        (2, "alpn", "the server answered 403"),
    ] {
        let (ok, _, err) = run(c.connect(i, framing));
        assert!(!ok, "{framing} through WAF {i}:\n{err}");
        assert!(
            err.contains(refusal) && !err.contains("trying") && !err.contains("chose framing"),
            "{framing} through WAF {i}:\n{err}"
        );
    }
}

#[test]
fn refusals_that_another_framing_would_not_change_do_not_climb() {
    let c = chain(&[RATE_LIMIT_WEBSOCKET, REFUSE_ALL]);

    // 429 is a rate limit: no other framing is tried, and the log says why.
    let (ok, _, err) = run(c.connect(0, "auto"));
    assert!(!ok, "{err}");
    assert!(
        err.contains("the server answered 429")
            && err.contains("upgrade websocket failed in a way another framing would not change")
            && err.contains("no other framing is tried")
            && !err.contains("trying alpn-ping"),
        "{err}"
    );

    // Every framing refused: each is tried once, and the error lists them all.
    let (ok, _, err) = run(c.connect(1, "auto"));
    assert!(!ok, "{err}");
    assert!(
        err.contains("trying alpn-ping")
            && err.contains("trying alpn")
            && err.contains("no framing is left")
            && err.contains("was refused in every framing: websocket: the server answered 403")
            && err.contains("; alpn-ping: the server answered 403")
            && err.contains("; alpn: the server answered 403")
            && err.contains("ask the server's operator"),
        "{err}"
    );
}
