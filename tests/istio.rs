//! The Istio manifests (`deploy/k8s/istio/`) in a real Envoy shaped as Istio
//! shapes an ingress gateway (`integration_tests::istio`): the connection
//! manager Istio generates, the project's EnvoyFilter merged into it, the
//! WasmPlugin's filter delivered by ECDS from a file; the real router (its
//! configuration from the manifests' ConfigMap) and the real client behind and
//! in front. Shown: upgrades of all three types approved and carrying bytes to
//! a backend; refusals answered as PROTOCOL.md says; a new plugin
//! configuration taking effect live, a bad one refused with the old one kept;
//! and the EnvoyFilter mistake of listing websocket again refused by Envoy.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::envoy::Envoy;
use integration_tests::http::{self, exchange, Response};
use integration_tests::istio::{self, Ecds, GATEWAY_PORT};
use integration_tests::process::Logged;
use integration_tests::stubs::{self, Stub};
use integration_tests::{payload, tls};
use serde_json::{json, Value};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The VirtualService's host, and what the test's clients send instead (so that
/// `alpn-tunnel` can resolve it).
const MANIFEST_HOST: &str = "tunnel.example.com";
const HOST: &str = "localhost";
/// How long a live configuration change may take to show.
const SWAP_DEADLINE: Duration = Duration::from_secs(30);

/// The manifests, adapted to this host in the few places a test must.
struct Manifests {
    plugin: Value,
    envoy_filter: Value,
    virtual_service: Value,
    router_toml: String,
}

impl Manifests {
    fn load() -> Manifests {
        let mut virtual_service = istio::manifest("gateway.yaml", "VirtualService");
        assert_eq!(virtual_service["spec"]["hosts"], json!([MANIFEST_HOST]));
        virtual_service["spec"]["hosts"] = json!([HOST]);
        let config_map = istio::manifest("router.yaml", "ConfigMap");
        Manifests {
            plugin: istio::manifest("wasmplugin.yaml", "WasmPlugin"),
            envoy_filter: istio::manifest("envoyfilter.yaml", "EnvoyFilter"),
            virtual_service,
            router_toml: config_map["data"]["router.toml"]
                .as_str()
                .unwrap()
                .to_string(),
        }
    }

    /// The WasmPlugin's pluginConfig with the load balancer's subnets replaced
    /// by loopback, where the tests' clients are.
    fn plugin_config(&self) -> Value {
        let mut config = self.plugin["spec"]["pluginConfig"].clone();
        assert_eq!(config["trusted_proxies"], json!(["10.0.0.0/16"]));
        config["trusted_proxies"] = json!(["127.0.0.1/32"]);
        config
    }
}

/// The router from the ConfigMap's router.toml: listeners on loopback port 0,
/// the test's certificate, and one route, `echo`, to `backend`.
struct Router {
    process: Logged,
    upgrade: SocketAddr,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Router {
    fn start(manifest_toml: &str, backend: SocketAddr) -> Router {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::ca("istio test CA");
        let leaf = tls::leaf(&["router.test"], "router.test", &ca);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &leaf.pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &leaf.key_pem).unwrap();
        let routes_at = manifest_toml
            .find("# YOUR ROUTES")
            .expect("router.toml's routes");
        let mut toml = manifest_toml[..routes_at].to_string();
        for (from, to) in [
            ("listen = \"0.0.0.0:9001\"", "listen = \"127.0.0.1:0\""),
            ("listen = \"0.0.0.0:9090\"", "listen = \"127.0.0.1:0\""),
            (
                "trusted_peers = [\"10.0.0.0/8\"]",
                "trusted_peers = [\"127.0.0.1/32\"]",
            ),
            ("/etc/alpn-router/tls/tls.crt", "server.pem"),
            ("/etc/alpn-router/tls/tls.key", "server.key"),
        ] {
            assert_eq!(toml.matches(from).count(), 1, "router.toml: {from}");
            toml = toml.replace(from, to);
        }
        toml.push_str(&format!(
            "[[route]]\nalpn = \"echo\"\nbackend = \"{backend}\"\n"
        ));
        let config = dir.path().join("router.toml");
        std::fs::write(&config, toml).unwrap();
        let bin =
            integration_tests::built("target/debug/alpn-router", "cargo build -p alpn-router");
        let mut process = Logged::spawn(
            Command::new(bin)
                .args(["serve", "--config"])
                .arg(&config)
                .env("RUST_LOG", "debug"),
        );
        let upgrade = process.address_after("upgrade listener on ");
        Router {
            process,
            upgrade,
            ca: dir.path().join("ca.pem"),
            _dir: dir,
        }
    }
}

/// Envoy as Istio's gateway, with `envoy_filter` merged in and the plugin
/// configuration `config` by ECDS, in front of `router`.
struct Gateway {
    envoy: Envoy,
    listener: SocketAddr,
    ecds: Ecds,
}

fn gateway(m: &Manifests, envoy_filter: &Value, config: &Value, router: SocketAddr) -> Gateway {
    let ecds = Ecds::new(&ecds_resource(m, config));
    let bootstrap = gateway_bootstrap(m, envoy_filter, &ecds, router);
    let envoy = Envoy::start(&bootstrap);
    let listener = envoy.listener(&format!("0.0.0.0_{GATEWAY_PORT}"));
    Gateway {
        envoy,
        listener,
        ecds,
    }
}

fn ecds_resource(m: &Manifests, config: &Value) -> Value {
    istio::wasm_extension_config(&m.plugin, config, &integration_tests::filter_wasm())
}

fn gateway_bootstrap(
    m: &Manifests,
    envoy_filter: &Value,
    ecds: &Ecds,
    router: SocketAddr,
) -> integration_tests::envoy::Bootstrap {
    let mut listener = istio::gateway_listener(&m.virtual_service, &m.plugin, ecds);
    assert_eq!(
        istio::apply_envoy_filter(&mut listener, envoy_filter, GATEWAY_PORT),
        1,
        "the EnvoyFilter must patch the gateway's connection manager once"
    );
    istio::bootstrap(
        &listener,
        &[istio::router_cluster(&m.virtual_service, router)],
    )
}

fn request(lines: &[&str]) -> Vec<u8> {
    let mut raw = lines.join("\r\n");
    raw.push_str("\r\n\r\n");
    raw.into_bytes()
}

fn upgrade_request(upgrade: &str) -> Vec<u8> {
    let host = format!("Host: {HOST}");
    let mut lines = vec![
        "GET /connectionupgrade HTTP/1.1",
        &host,
        "Connection: Upgrade",
    ];
    let upgrade = format!("Upgrade: {upgrade}");
    let key = format!("Sec-WebSocket-Key: {KEY}");
    lines.push(&upgrade);
    if upgrade.ends_with("websocket") {
        lines.extend([
            "Sec-WebSocket-Version: 13",
            &key,
            "Sec-WebSocket-Protocol: alpn",
        ]);
    }
    request(&lines)
}

fn assert_refused(r: &Response, status: u16, reason: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    let text = r.text();
    assert!(
        text.contains(reason),
        "{what}: body {text:?} lacks {reason:?}"
    );
    assert_eq!(text.matches('\n').count(), 1, "{what}: one line: {text:?}");
}

/// `alpn-tunnel connect` through the gateway with `framing`: sends `data`,
/// closes its side, and returns what came back.
fn tunnel_round_trip(gw: SocketAddr, router: &Router, framing: &str, data: &[u8]) -> Vec<u8> {
    let mut child = integration_tests::tunnel_command()
        .args([
            "connect",
            "--alpn",
            "echo",
            "--sni",
            "router.test",
            "--timeout",
            "30s",
        ])
        .arg("--server")
        .arg(format!("http://{HOST}:{}", gw.port()))
        .arg("--upgrade")
        .arg(framing)
        .arg("--ca")
        .arg(&router.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start alpn-tunnel");
    let mut stdin = child.stdin.take().unwrap();
    let data_owned = data.to_vec();
    let writer = thread::spawn(move || {
        stdin.write_all(&data_owned).expect("write to alpn-tunnel");
        // Dropping stdin closes our side of the tunnel.
    });
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || stdout.read_to_end(&mut out).map(|_| out));
    // Every wait has a deadline: kill the client if the tunnel hangs.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("alpn-tunnel ({framing}) still running after 60 s");
        }
        thread::sleep(Duration::from_millis(50));
    };
    writer.join().unwrap();
    let out = reader.join().unwrap().expect("read alpn-tunnel's output");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        status.success(),
        "alpn-tunnel ({framing}) failed: {status}\n{log}"
    );
    out
}

/// Waits until `check` holds on a fresh answer to `raw` (a configuration push
/// shows when Envoy has applied it), or fails at the deadline.
fn wait_until(
    gw: SocketAddr,
    raw: &[u8],
    what: &str,
    check: impl Fn(&Response) -> bool,
) -> Response {
    let started = Instant::now();
    loop {
        let r = exchange(gw, raw);
        if check(&r) {
            return r;
        }
        assert!(
            started.elapsed() < SWAP_DEADLINE,
            "{what}: still {r:?} after {SWAP_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The ECDS counter `name` (`config_reload`, `config_fail`) of the filter.
fn ecds_counter(envoy: &Envoy, name: &str) -> u64 {
    let stats = http::get(envoy.admin, "/stats?filter=extension_config_discovery").text();
    stats
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(": ")?;
            (key.contains("alpn-upgrade") && key.ends_with(&format!(".{name}")))
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no ECDS counter {name} in:\n{stats}"))
}

#[test]
fn upgrades_through_the_istio_gateway_reach_the_router_and_refusals_follow_the_protocol() {
    let m = Manifests::load();
    let backend = stubs::echo();
    let router = Router::start(&m.router_toml, backend.addr);
    let gw = gateway(&m, &m.envoy_filter, &m.plugin_config(), router.upgrade);

    // All three types approved, bytes through the real router to the backend.
    for (i, framing) in ["alpn", "alpn-ping", "websocket"].into_iter().enumerate() {
        let data = payload(200_000, 17 + i as u64);
        let back = tunnel_round_trip(gw.listener, &router, framing, &data);
        assert!(
            back == data,
            "{framing}: {} bytes came back of {}",
            back.len(),
            data.len()
        );
    }

    let up = "GET /connectionupgrade HTTP/1.1";
    let host = &format!("Host: {HOST}");
    // Refusals: by the filter (from ECDS), and by the connection manager with
    // the EnvoyFilter's local_reply_config.
    let cases: &[(&str, Vec<u8>, u16, &str)] = &[
        (
            "method",
            request(&[
                "POST /connectionupgrade HTTP/1.1",
                host,
                "Connection: Upgrade",
                "Upgrade: alpn",
                "Content-Length: 0",
            ]),
            405,
            "method POST is not allowed",
        ),
        (
            "no upgrade on the upgrade path",
            request(&[up, host]),
            426,
            "only accepts connection upgrades",
        ),
        (
            "a type the connection manager does not know",
            request(&[up, host, "Connection: Upgrade", "Upgrade: ssh"]),
            426,
            "upgrade type not allowed",
        ),
        (
            "several Upgrade values",
            request(&[up, host, "Connection: Upgrade", "Upgrade: alpn, websocket"]),
            400,
            "several Upgrade values",
        ),
        (
            "alpn off the upgrade path",
            request(&[
                "GET /app HTTP/1.1",
                host,
                "Connection: Upgrade",
                "Upgrade: alpn",
            ]),
            404,
            "/app is not an upgrade path",
        ),
        (
            "WebSocket without a valid key",
            request(&[
                up,
                host,
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: short",
                "Sec-WebSocket-Protocol: alpn",
            ]),
            400,
            "base64 of 16 bytes",
        ),
        (
            "a body",
            request(&[
                up,
                host,
                "Connection: Upgrade",
                "Upgrade: alpn",
                "Content-Length: 5",
            ]),
            400,
            "must not have a body",
        ),
    ];
    for (what, raw, status, reason) in cases {
        assert_refused(&exchange(gw.listener, raw), *status, reason, what);
    }
    // The 426 names the allowed types (the local reply's header, the fragment's).
    let r = exchange(
        gw.listener,
        &request(&[up, host, "Connection: Upgrade", "Upgrade: ssh"]),
    );
    assert_eq!(
        r.header("upgrade"),
        Some("alpn, alpn-ping, websocket"),
        "{r:?}"
    );
    // The router saw the three tunnels and nothing refused.
    let log = router.process.log();
    assert_eq!(log.matches("tunnel open").count(), 3, "router log:\n{log}");
    assert!(
        !log.contains("no upgrade"),
        "a refused request reached the router:\n{log}"
    );
}

#[test]
fn a_new_plugin_configuration_applies_live_and_a_bad_one_is_refused_keeping_the_old() {
    let m = Manifests::load();
    let router: Stub = stubs::router();
    let config = m.plugin_config();
    let mut gw = gateway(&m, &m.envoy_filter, &config, router.addr);
    let pid = gw.envoy.pid();
    assert_eq!(
        exchange(gw.listener, &upgrade_request("websocket")).status,
        101
    );
    let reloads = ecds_counter(&gw.envoy, "config_reload");

    // websocket no longer allowed: the filter answers 426 with the new list.
    let mut narrower = config.clone();
    narrower["allowed_types"] = json!(["alpn", "alpn-ping"]);
    gw.ecds.push(&ecds_resource(&m, &narrower));
    let r = wait_until(
        gw.listener,
        &upgrade_request("websocket"),
        "websocket refused",
        |r| r.status != 101,
    );
    assert_refused(
        &r,
        426,
        "is not allowed: use one of alpn, alpn-ping\n",
        "websocket after the swap",
    );
    assert_eq!(r.header("upgrade"), Some("alpn, alpn-ping"), "{r:?}");
    assert_eq!(exchange(gw.listener, &upgrade_request("alpn")).status, 101);
    assert!(ecds_counter(&gw.envoy, "config_reload") > reloads);

    // A configuration the filter refuses (trusted_hops without trusted_proxies):
    // Envoy rejects the update and keeps the last good one.
    let fails = ecds_counter(&gw.envoy, "config_fail");
    let mut bad = narrower.clone();
    bad.as_object_mut().unwrap().remove("trusted_proxies");
    gw.ecds.push(&ecds_resource(&m, &bad));
    let started = Instant::now();
    while ecds_counter(&gw.envoy, "config_fail") == fails {
        assert!(
            started.elapsed() < SWAP_DEADLINE,
            "the bad configuration was not refused:\n{}",
            gw.envoy.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        gw.envoy.log().contains("trusted_proxies"),
        "Envoy's log names the problem:\n{}",
        gw.envoy.log()
    );
    let r = exchange(gw.listener, &upgrade_request("websocket"));
    assert_refused(
        &r,
        426,
        "is not allowed: use one of alpn, alpn-ping\n",
        "websocket, old configuration kept",
    );
    assert_eq!(exchange(gw.listener, &upgrade_request("alpn")).status, 101);
    // The same process all along: no restart.
    assert_eq!(gw.envoy.pid(), pid);
}

/// Istio's gateway connection manager appends to X-Forwarded-For; the filter
/// reads the load balancer's entry from it, so the EnvoyFilter turns that off.
#[test]
fn the_client_address_is_the_load_balancers_entry_with_the_envoy_filter_and_the_balancer_without() {
    let m = Manifests::load();
    let config = m.plugin_config();
    let xff = "X-Forwarded-For: 203.0.113.9";
    let host = format!("Host: {HOST}");
    let raw = request(&[
        "GET /connectionupgrade HTTP/1.1",
        &host,
        "Connection: Upgrade",
        "Upgrade: alpn",
        xff,
    ]);
    let client_addr = |router: &Stub| {
        let heads = router.heads();
        heads
            .last()
            .and_then(|h| {
                h.lines()
                    .find_map(|l| l.strip_prefix("x-alpn-client-addr: ").map(str::to_string))
            })
            .unwrap_or_else(|| panic!("no client address in {heads:?}"))
    };

    let router = stubs::router();
    let gw = gateway(&m, &m.envoy_filter, &config, router.addr);
    assert_eq!(exchange(gw.listener, &raw).status, 101);
    assert_eq!(client_addr(&router), "203.0.113.9");
    drop(gw);

    // Without the EnvoyFilter's skip_xff_append (all else equal), Envoy appends
    // the peer to X-Forwarded-For and the filter takes the balancer for the client.
    let mut without = m.envoy_filter.clone();
    without["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
        .as_object_mut()
        .unwrap()
        .remove("skip_xff_append");
    let router = stubs::router();
    let gw = gateway(&m, &without, &config, router.addr);
    assert_eq!(exchange(gw.listener, &raw).status, 101);
    // (Envoy appends the peer, or for a loopback peer its own address.)
    let forwarded = router.heads().last().and_then(|h| {
        h.lines()
            .find_map(|l| l.strip_prefix("x-forwarded-for: ").map(str::to_string))
    });
    let forwarded = forwarded.expect("X-Forwarded-For reached the router");
    let appended = forwarded.rsplit(',').next().unwrap().trim().to_string();
    assert_ne!(
        appended, "203.0.113.9",
        "Envoy appended nothing: {forwarded}"
    );
    assert_eq!(
        client_addr(&router),
        appended,
        "X-Forwarded-For: {forwarded}"
    );
}

#[test]
fn an_envoy_filter_listing_websocket_again_makes_envoy_reject_the_listener() {
    let m = Manifests::load();
    let mut duplicate = m.envoy_filter.clone();
    duplicate["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["upgrade_configs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"upgrade_type": "websocket"}));
    let ecds = Ecds::new(&ecds_resource(&m, &m.plugin_config()));
    let bootstrap = gateway_bootstrap(&m, &duplicate, &ecds, "127.0.0.1:1".parse().unwrap());
    let (status, log) = Envoy::run_to_exit(&bootstrap, &[]);
    assert!(!status.success(), "Envoy accepted the listener:\n{log}");
    assert!(
        log.contains("multiple upgrade configs with the same name"),
        "Envoy's log:\n{log}"
    );

    // The shipped EnvoyFilter (no websocket) is accepted by the same Envoy.
    let bootstrap = gateway_bootstrap(&m, &m.envoy_filter, &ecds, "127.0.0.1:1".parse().unwrap());
    let (status, log) = Envoy::run_to_exit(&bootstrap, &["--mode", "validate"]);
    assert!(
        status.success(),
        "the shipped EnvoyFilter was refused:\n{log}"
    );
}
