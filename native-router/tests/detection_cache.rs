//! The detection cache across runs of `alpn-tunnel` (PROTOCOL.md section 6):
//! the path and the framing that worked, per server, under
//! `$XDG_CACHE_HOME/alpn-tunnel/` (a temporary directory here, never the
//! user's), used by the next run, shown by `probe` (which detects afresh),
//! cleared by `forget`, ignored with a warning when corrupt, and replaced when
//! a failure contradicts it: a stale path falls back to the other one once, a
//! stale framing climbs the ladder. Against the real chain: nginx (plain, and
//! configured like WAFs) in front of Envoy with the filter, in front of the
//! router, and the router's direct port.

mod support;

use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use alpn_protocol::framing::Framing;
use alpn_tunnel::cache::{Cache, DEFAULT_TTL};
use alpn_tunnel::{Path, ServerUrl};
use integration_tests::envoy::Envoy;
use integration_tests::load_balancer::LoadBalancer;
use support::{backend, config, echo, Backend, Pki, RouterProcess};

/// A WAF that refuses WebSocket upgrades with 403.
const REFUSE_WEBSOCKET: &str = "if ($http_upgrade ~* websocket) { return 403; }";
/// A WAF that passes only WebSocket upgrades.
const ONLY_WEBSOCKET: &str = r#"set $refused "";
if ($http_upgrade) { set $refused "upgrade"; }
if ($http_upgrade ~* ^websocket$) { set $refused ""; }
if ($refused) { return 403; }"#;

struct Chain {
    pki: Pki,
    router: RouterProcess,
    _envoy: Envoy,
    /// A plain ALB-like nginx, one that refuses WebSocket, one that passes only it.
    lbs: [LoadBalancer; 3],
    _echo: Backend,
    /// `XDG_CACHE_HOME` for every run of a test.
    home: tempfile::TempDir,
}

const PLAIN: usize = 0;
const NO_WEBSOCKET: usize = 1;
const WEBSOCKET_ONLY: usize = 2;

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
    let idle = Duration::from_secs(60);
    let lbs = [
        LoadBalancer::nginx_with_rule(web, idle, ""),
        LoadBalancer::nginx_with_rule(web, idle, REFUSE_WEBSOCKET),
        LoadBalancer::nginx_with_rule(web, idle, ONLY_WEBSOCKET),
    ];
    Chain {
        pki,
        router,
        _envoy: envoy,
        lbs,
        _echo: echo_backend,
        home: tempfile::tempdir().unwrap(),
    }
}

impl Chain {
    fn lb(&self, i: usize) -> String {
        format!("https://{}", self.lbs[i].addr)
    }

    fn direct(&self) -> String {
        format!("https://{}", self.router.direct)
    }

    /// The cache directory.
    fn dir(&self) -> PathBuf {
        self.home.path().join("alpn-tunnel")
    }

    /// The cache as the client keeps it, to look into and to plant entries.
    fn cache(&self) -> Cache {
        Cache::new(self.dir(), DEFAULT_TTL).unwrap()
    }

    fn cached(&self, server: &str) -> Option<Path> {
        self.cache()
            .get(&ServerUrl::parse(server).unwrap(), None)
            .map(|e| e.path)
    }

    /// `alpn-tunnel ARGS` with the cache in this test's home, at its default TTL.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = integration_tests::tunnel_command();
        c.args(args)
            .env("XDG_CACHE_HOME", self.home.path())
            .env_remove("ALPN_TUNNEL_CACHE_TTL")
            .env_remove("ALPN_TUNNEL_UPGRADE")
            .env("RUST_LOG", "info");
        c
    }

    /// `alpn-tunnel SUB` to `server` for `echo`, trusting the CAs of the chain.
    fn tunnel(&self, sub: &str, server: &str) -> Command {
        let outer = self
            .lbs
            .iter()
            .find(|lb| server.ends_with(&lb.addr.to_string()))
            .map_or_else(|| self.pki.path("router-ca.pem"), |lb| lb.cert.pem.clone());
        let mut c = self.cli(&[sub, "--server", server, "--alpn", "echo"]);
        c.args(["--sni", "router.test", "--timeout", "5s", "--ca"])
            .arg(self.pki.path("router-ca.pem"))
            .arg("--outer-ca")
            .arg(outer);
        c
    }
}

/// Runs `connect` with a line on stdin; asserts the line comes back, returns the log.
fn connect(mut c: Command) -> String {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run alpn-tunnel");
    child.stdin.take().unwrap().write_all(b"cached?\n").unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    assert_eq!(out, b"cached?\n", "{err}");
    err
}

/// Runs a command that prints a report; returns its stdout and stderr.
fn output(mut c: Command) -> (String, String) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files(dir: &FsPath) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn detection_is_cached_across_runs_shown_by_probe_and_cleared_by_forget() {
    let c = chain();
    let lb = c.lb(PLAIN);

    // The first run detects and stores what it found.
    let err = connect(c.tunnel("connect", &lb));
    assert!(
        err.contains("an L7 load balancer is in the way: upgrade (websocket) (the test handshake: no_application_protocol alert)"),
        "{err}"
    );
    assert_eq!(
        c.cached(&lb),
        Some(Path::Upgrade(Framing::WebSocket(
            alpn_protocol::framing::Subprotocol::Alpn
        )))
    );
    let stored = files(&c.dir());
    assert_eq!(stored.len(), 1, "one file per server: {stored:?}");

    // The next run uses it, and says so.
    let err = connect(c.tunnel("connect", &lb));
    assert!(
        err.contains("upgrade websocket, stored") && err.contains("(cached)"),
        "{err}"
    );

    // probe says what is cached and detects afresh anyway.
    let (out, _) = output(c.tunnel("probe", &lb));
    for step in [
        "cache",
        "upgrade websocket, stored",
        "the probe detects afresh anyway",
        "TLS offering only \"echo\"",
        "result: tunnels work",
    ] {
        assert!(out.contains(step), "{step:?} missing from:\n{out}");
    }

    // A corrupt file is ignored with a warning, then replaced.
    std::fs::write(&stored[0], "{ not json").unwrap();
    let err = connect(c.tunnel("connect", &lb));
    assert!(
        err.contains("ignoring the cache file") && err.contains("(the test handshake"),
        "{err}"
    );
    assert!(c.cached(&lb).is_some(), "rewritten after the tunnel worked");

    // The direct port is a server of its own.
    let err = connect(c.tunnel("connect", &c.direct()));
    assert!(err.contains("no load balancer in the way"), "{err}");
    assert_eq!(c.cached(&c.direct()), Some(Path::Direct));

    // forget SERVER drops that server only (the URL is normalised as --server is).
    let short = lb.clone() + "/";
    let (out, _) = output(c.cli(&["forget", &short]));
    assert_eq!(out, format!("forgot {lb}/connectionupgrade\n"));
    assert_eq!(c.cached(&lb), None);
    assert_eq!(c.cached(&c.direct()), Some(Path::Direct));
    // forget drops everything.
    let (out, _) = output(c.cli(&["forget"]));
    assert!(out.contains(&c.direct()), "{out}");
    assert!(files(&c.dir()).is_empty());
    let (out, _) = output(c.cli(&["forget"]));
    assert!(out.starts_with("nothing cached for any server"), "{out}");

    // --cache-ttl 0 turns the cache off: nothing is read or written.
    let mut off = c.tunnel("connect", &lb);
    off.args(["--cache-ttl", "0"]);
    let err = connect(off);
    assert!(!err.contains("(cached)"), "{err}");
    assert!(files(&c.dir()).is_empty());
}

#[test]
fn a_cached_path_that_the_other_path_would_explain_falls_back_once_and_is_replaced() {
    let c = chain();
    let cache = c.cache();
    let lb = c.lb(PLAIN);
    let websocket = Path::Upgrade(Framing::WebSocket(
        alpn_protocol::framing::Subprotocol::Alpn,
    ));
    // Stale entries: the load balancer was not there, and the router's direct
    // port was behind one.
    cache.put(&ServerUrl::parse(&lb).unwrap(), None, Path::Direct, "stale");
    cache.put(
        &ServerUrl::parse(&c.direct()).unwrap(),
        None,
        websocket,
        "stale",
    );

    let err = connect(c.tunnel("connect", &lb));
    assert!(
        err.contains("direct TLS, stored")
            && err.contains(
                "an L7 load balancer in the way would explain that: trying upgrade websocket once"
            )
            && err.contains("via upgrade websocket-ping"),
        "{err}"
    );
    assert_eq!(c.cached(&lb), Some(websocket));

    let err = connect(c.tunnel("connect", &c.direct()));
    assert!(
        err.contains(
            "the server refused http/1.1, so it is no HTTP load balancer: trying direct TLS once"
        ) && err.contains("via direct TLS"),
        "{err}"
    );
    assert_eq!(c.cached(&c.direct()), Some(Path::Direct));
}

#[test]
fn the_framing_that_worked_is_remembered_and_replaced_when_refused() {
    let c = chain();
    let no_ws = c.lb(NO_WEBSOCKET);

    // The first run climbs past the WAF and stores the framing that worked.
    let err = connect(c.tunnel("connect", &no_ws));
    assert!(err.contains("chose framing alpn-ping"), "{err}");
    assert_eq!(c.cached(&no_ws), Some(Path::Upgrade(Framing::AlpnPing)));
    // The next run starts there: no refusal on the way.
    let err = connect(c.tunnel("connect", &no_ws));
    assert!(
        err.contains("upgrade alpn-ping, stored")
            && !err.contains("WARN")
            && err.contains("via upgrade alpn-ping"),
        "{err}"
    );

    // A cached framing that is now refused climbs, and the cache follows.
    let ws_only = c.lb(WEBSOCKET_ONLY);
    c.cache().put(
        &ServerUrl::parse(&ws_only).unwrap(),
        None,
        Path::Upgrade(Framing::AlpnPing),
        "stale",
    );
    let err = connect(c.tunnel("connect", &ws_only));
    assert!(
        err.contains("upgrade alpn-ping refused (the server answered 403")
            && err.contains("trying websocket")
            && err.contains("via upgrade websocket-ping"),
        "{err}"
    );
    assert_eq!(
        c.cached(&ws_only),
        Some(Path::Upgrade(Framing::WebSocket(
            alpn_protocol::framing::Subprotocol::Alpn
        )))
    );
}
