//! Loading the router's TOML configuration: the issue's example shape loads with
//! its meanings, and every kind of mistake is refused naming the key.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alpn_router::{Config, ConfigError};

/// A directory with a server certificate, a CA, and `router.toml` holding `toml`.
fn write(dir: &Path, toml: &str) -> PathBuf {
    let server = rcgen::generate_simple_self_signed(vec!["router.test".into()]).unwrap();
    fs::write(dir.join("server.pem"), server.cert.pem()).unwrap();
    fs::write(dir.join("server.key"), server.signing_key.serialize_pem()).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["clients-ca".into()]).unwrap();
    fs::write(dir.join("clients-ca.pem"), ca.cert.pem()).unwrap();
    let file = dir.join("router.toml");
    fs::write(&file, toml).unwrap();
    file
}

const EXAMPLE: &str = r#"
[upgrade]
listen = "127.0.0.1:9001"
path = "/connectionupgrade"
trusted_peers = ["127.0.0.1/32"]
ping_interval = "30s"

[direct]
listen = "0.0.0.0:9443"

[metrics]
listen = "127.0.0.1:9090"

[tls]
cert = "server.pem"
key = "server.key"

[[route]]
alpn = "postgresql"
backend = "127.0.0.1:5432"
client_ca = "clients-ca.pem"
proxy_protocol = true

[[route]]
alpn = "redis"
backend = "127.0.0.1:6379"
"#;

#[test]
fn the_example_loads_with_its_meanings() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write(dir.path(), EXAMPLE)).unwrap();
    let upgrade = config.upgrade.as_ref().unwrap();
    assert_eq!(upgrade.listen.to_string(), "127.0.0.1:9001");
    assert_eq!(upgrade.names.upgrade_paths, ["/connectionupgrade"]);
    assert_eq!(upgrade.names, alpn_protocol::names::Names::default());
    assert_eq!(upgrade.ping_interval, Duration::from_secs(30));
    assert_eq!(upgrade.trusted_peers.len(), 1);
    assert_eq!(config.direct.unwrap().to_string(), "0.0.0.0:9443");
    let metrics = config.metrics.unwrap();
    assert_eq!(metrics.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(
        (metrics.max_connections, metrics.request_timeout),
        (16, Duration::from_secs(5)),
        "the metrics listener has a cap and a deadline by default"
    );
    assert_eq!(config.default_cert.chain.len(), 1);
    assert_eq!(config.routes.len(), 2);
    let pg = &config.routes[0];
    assert_eq!(
        (pg.alpn.as_str(), pg.backend.as_str(), pg.proxy_protocol),
        ("postgresql", "127.0.0.1:5432", true)
    );
    assert_eq!(pg.client_ca.as_ref().map(Vec::len), Some(1));
    assert!(config.routes[1].client_ca.is_none() && !config.routes[1].proxy_protocol);
}

#[test]
fn every_name_is_configurable_with_the_filters_keys() {
    use alpn_protocol::names::{Subprotocol, UpgradeType};
    let dir = tempfile::tempdir().unwrap();
    let toml = EXAMPLE.replace(
        "path = \"/connectionupgrade\"\n",
        r#"names.upgrade_paths = ["/tunnel", "/t2"]
names.type_tokens = { alpn = "tcp", alpn_ping = "tcp-ping", websocket = "ws" }
names.allowed_types = ["tcp-ping", "ws"]
names.subprotocol_tokens = { alpn = "raw", alpn_ping = "pinged" }
names.websocket_subprotocols = ["pinged"]
names.duplicate_upgrade_header = "X-Tunnel-Type"
names.client_addr_header = "X-Tunnel-Client"
"#,
    );
    let config = Config::load(&write(dir.path(), &toml)).unwrap();
    let names = &config.upgrade.as_ref().unwrap().names;
    assert_eq!(names.upgrade_paths, ["/tunnel", "/t2"]);
    assert_eq!(names.type_token(UpgradeType::AlpnPing), "tcp-ping");
    assert_eq!(
        names.allowed_types,
        [UpgradeType::AlpnPing, UpgradeType::WebSocket]
    );
    assert_eq!(names.subprotocol_token(Subprotocol::Alpn), "raw");
    assert_eq!(names.websocket_subprotocols, [Subprotocol::AlpnPing]);
    assert_eq!(
        (
            names.duplicate_upgrade_header.as_str(),
            names.client_addr_header.as_str()
        ),
        ("x-tunnel-type", "x-tunnel-client")
    );
}

#[test]
fn every_mistake_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "path = \"/connectionupgrade\"",
            "path = \"/connectionupgrade\"\nnames = { upgrade_paths = [\"/t\"] }",
            "upgrade.path",
        ),
        (
            "path = \"/connectionupgrade\"",
            "names = { type_tokens = { alpn = \"websocket\" } }",
            "upgrade.names.type_tokens.alpn",
        ),
        (
            "path = \"/connectionupgrade\"",
            "names = { allowed_types = [\"alpn\", \"chat\"] }",
            "upgrade.names.allowed_types[1]",
        ),
        (
            "path = \"/connectionupgrade\"",
            "names = { client_addr_header = \"Host\" }",
            "upgrade.names.client_addr_header",
        ),
        (
            "path = \"/connectionupgrade\"",
            "names = { upgrade_path = [\"/t\"] }",
            "upgrade.names.upgrade_path",
        ),
        (
            "[upgrade]\nlisten = \"127.0.0.1:9001\"\n",
            "[upgrade]\nlisten = \"127.0.0.1:9001\"\nbogus = 1\n",
            "upgrade.bogus",
        ),
        (
            "ping_interval = \"30s\"",
            "ping_interval = \"thirty\"",
            "upgrade.ping_interval",
        ),
        (
            "listen = \"0.0.0.0:9443\"",
            "listen = \"0.0.0.0\"",
            "direct.listen",
        ),
        (
            "trusted_peers = [\"127.0.0.1/32\"]",
            "trusted_peers = [\"127.0.0.1/33\"]",
            "upgrade.trusted_peers[0]",
        ),
        (
            "cert = \"server.pem\"",
            "cert = \"missing.pem\"",
            "tls.cert",
        ),
        ("key = \"server.key\"", "key = \"server.pem\"", "tls.key"),
        (
            "client_ca = \"clients-ca.pem\"",
            "client_ca = \"server.key\"",
            "route[0].client_ca",
        ),
        (
            "backend = \"127.0.0.1:6379\"",
            "backend = \"127.0.0.1\"",
            "route[1].backend",
        ),
        ("alpn = \"redis\"", "alpn = \"postgresql\"", "route[1].alpn"),
        (
            "listen = \"127.0.0.1:9090\"",
            "listen = \"127.0.0.1:9090\"\nmax_connections = 0",
            "metrics.max_connections",
        ),
        (
            "listen = \"127.0.0.1:9090\"",
            "listen = \"127.0.0.1:9090\"\n[limits]\nhalf_closed_timeout = \"soon\"",
            "limits.half_closed_timeout",
        ),
        (
            "listen = \"127.0.0.1:9090\"",
            "listen = \"127.0.0.1:9090\"\n[limits]\nmax_connections_per_client = 0",
            "limits.max_connections_per_client",
        ),
        (
            "listen = \"127.0.0.1:9090\"",
            "listen = \"127.0.0.1:9090\"\n[limits]\nhandshake_timeout = \"10s\"\npreopen_timeout = \"5s\"",
            "limits.preopen_timeout",
        ),
        (
            "listen = \"127.0.0.1:9090\"",
            "listen = \"127.0.0.1:9090\"\n[limits]\npreopen_timeout = \"2h\"",
            "limits.preopen_timeout",
        ),
        (
            "proxy_protocol = true",
            "proxy_protocol = \"yes\"",
            "route[0].proxy_protocol",
        ),
        (
            "proxy_protocol = true",
            "proxy_protocol = true\nbackend_tls = { ca = \"clients-ca.pem\", sni = \"not a name\" }",
            "route[0].backend_tls.sni",
        ),
    ];
    for (from, to, key) in cases {
        assert!(EXAMPLE.contains(from), "{from:?} is not in the example");
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(&write(dir.path(), &EXAMPLE.replacen(from, to, 1))).unwrap_err();
        let shown = err.to_string();
        match &err {
            ConfigError::Syntax { key: k, .. } | ConfigError::Invalid { key: k, .. } => {
                assert_eq!(k, key, "{to:?}: {shown}");
            }
            ConfigError::Read { .. } => panic!("{to:?}: {shown}"),
        }
        assert!(
            shown.contains(&format!("{key:?}")) && shown.contains("router.toml"),
            "{shown}"
        );
    }
}

#[test]
fn a_file_with_nothing_to_listen_on_or_no_route_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n";
    let err = Config::load(&write(
        dir.path(),
        &format!("{tls}[[route]]\nalpn = \"x\"\nbackend = \"h:1\"\n"),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("nothing to listen on"), "{err}");
    let err = Config::load(&write(
        dir.path(),
        &format!("[direct]\nlisten = \"127.0.0.1:1\"\n{tls}"),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("at least one [[route]]"), "{err}");
    let err = Config::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
}

#[test]
fn the_shipped_example_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/router.example.toml"))
            .unwrap();
    let config = Config::load(&write(dir.path(), &example)).unwrap();
    assert_eq!(config.routes.len(), 2);
    assert_eq!(
        config.limits,
        alpn_router::Limits::default(),
        "the example shows the defaults"
    );
    assert_eq!(
        config.routes[1].idle_timeout,
        Some(Duration::from_secs(3600))
    );

    // The commented names table, uncommented (in place of `path`), loads and
    // shows the defaults.
    let mut in_names = false;
    let mut names_uncommented = String::new();
    for line in example.lines() {
        if line == "# [upgrade.names]" {
            in_names = true;
        }
        if line.trim().is_empty() {
            in_names = false;
        }
        match line.strip_prefix("# ") {
            Some(rest) if in_names => names_uncommented.push_str(rest),
            _ if line.starts_with("path = ") => continue,
            _ => names_uncommented.push_str(line),
        }
        names_uncommented.push('\n');
    }
    assert!(names_uncommented.contains("\n[upgrade.names]\n"));
    let config = Config::load(&write(dir.path(), &names_uncommented)).unwrap();
    assert_eq!(
        config.upgrade.unwrap().names,
        alpn_protocol::names::Names::default()
    );
}

#[test]
fn values_are_read_with_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let example = EXAMPLE
        .replacen(
            "trusted_peers = [\"127.0.0.1/32\"]",
            "trusted_peers = [\"::ffff:10.0.0.0/104\", \"192.0.2.7\", \"2001:db8::/32\"]",
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:9090\"",
            "listen = \"127.0.0.1:9090\"\nrequest_timeout = \"1m 30s\"\n[limits]\nconnect_timeout = \"250ms\"",
            1,
        );
    let config = Config::load(&write(dir.path(), &example)).unwrap();
    let peers: Vec<String> = config
        .upgrade
        .as_ref()
        .unwrap()
        .trusted_peers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        peers,
        ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"],
        "IPv4-mapped blocks become IPv4, as client addresses do"
    );
    assert_eq!(
        config.metrics.unwrap().request_timeout,
        Duration::from_secs(90)
    );
    assert_eq!(
        config.limits,
        alpn_router::Limits {
            connect_timeout: Duration::from_millis(250),
            ..Default::default()
        },
        "a key left out of [limits] keeps its default"
    );

    for (from, to, key) in [
        (
            "ping_interval = \"30s\"",
            "ping_interval = \"0s\"",
            "upgrade.ping_interval",
        ),
        (
            "path = \"/connectionupgrade\"",
            "path = \"nope\"",
            "upgrade.path",
        ),
        ("alpn = \"redis\"", "alpn = \"\"", "route[1].alpn"),
    ] {
        let err = Config::load(&write(dir.path(), &EXAMPLE.replacen(from, to, 1))).unwrap_err();
        assert!(
            err.to_string().contains(&format!("{key:?}")),
            "{to:?}: {err}"
        );
    }
}
