//! The filter inside a real Envoy (the shipped `behind-l7.yaml`), over real
//! sockets: every refusal with its status and reason, an approved upgrade that
//! reaches the router and carries bytes both ways, ordinary traffic untouched
//! (and kept out of the Wasm VM), the metrics on `/stats`, and a bad plugin
//! configuration refused.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::http::{self, exchange, Response};
use integration_tests::payload;
use integration_tests::stubs::{self, Stub};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SHIPPED_FILTER_CONFIG: &str =
    r#"{"trusted_hops": 1, "trusted_proxies": ["127.0.0.1/32", "::1/128"]}"#;

struct Setup {
    envoy: Envoy,
    listener: SocketAddr,
    router: Stub,
    web: Stub,
}

/// Envoy from `behind-l7.yaml` with `filter_config` as the plugin configuration.
fn setup(filter_config: &str) -> Setup {
    let router = stubs::router();
    let web = stubs::web();
    let bootstrap = Bootstrap::shipped("behind-l7.yaml")
        .port(8080, 0)
        .port(9001, router.addr.port())
        .port(8081, web.addr.port())
        .replace(SHIPPED_FILTER_CONFIG, filter_config);
    let envoy = Envoy::start(&bootstrap);
    let listener = envoy.listener("web");
    Setup {
        envoy,
        listener,
        router,
        web,
    }
}

fn request(lines: &[&str]) -> Vec<u8> {
    let mut raw = lines.join("\r\n");
    raw.push_str("\r\n\r\n");
    raw.into_bytes()
}

fn assert_refused(r: &Response, status: u16, reason: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{what}: {r:?}"
    );
    let text = r.text();
    assert!(
        text.contains(reason),
        "{what}: body {text:?} lacks {reason:?}"
    );
    assert_eq!(
        text.matches('\n').count(),
        1,
        "{what}: the reason must be one line: {text:?}"
    );
}

#[test]
fn every_refusal_answers_with_its_status_and_reason() {
    let s = setup(SHIPPED_FILTER_CONFIG);
    let up = "GET /connectionupgrade HTTP/1.1";
    let host = "Host: tunnel.example";
    let cases: &[(&str, Vec<u8>, u16, &str)] = &[
        (
            "POST",
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
            "no upgrade",
            request(&[up, host]),
            426,
            "only accepts connection upgrades",
        ),
        (
            "unknown type (refused by the connection manager)",
            request(&[up, host, "Connection: Upgrade", "Upgrade: ssh"]),
            426,
            "upgrade type not allowed",
        ),
        // Envoy's codec removes an h2c upgrade before anything else sees it.
        (
            "h2c",
            request(&[
                up,
                host,
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
            ]),
            426,
            "only accepts connection upgrades",
        ),
        (
            "several Upgrade values (refused by the connection manager)",
            request(&[up, host, "Connection: Upgrade", "Upgrade: alpn, websocket"]),
            400,
            "several Upgrade values",
        ),
        (
            "duplicate header disagrees",
            request(&[
                up,
                host,
                "Connection: Upgrade",
                "Upgrade: alpn",
                "X-Alpn-Upgrade: websocket",
            ]),
            400,
            "does not match Upgrade",
        ),
        (
            "Connection without the token, type in the duplicate header",
            request(&[up, host, "Connection: keep-alive", "X-Alpn-Upgrade: alpn"]),
            400,
            "Connection header must contain the upgrade token",
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
        (
            "WebSocket version",
            request(&[
                up,
                host,
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Version: 8",
                &format!("Sec-WebSocket-Key: {KEY}"),
                "Sec-WebSocket-Protocol: alpn",
            ]),
            400,
            "Sec-WebSocket-Version: 13",
        ),
        (
            "WebSocket key",
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
            "WebSocket subprotocol",
            request(&[
                up,
                host,
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Version: 13",
                &format!("Sec-WebSocket-Key: {KEY}"),
                "Sec-WebSocket-Protocol: chat",
            ]),
            400,
            "Sec-WebSocket-Protocol with one of alpn, alpn-ping",
        ),
        (
            "alpn on another path",
            request(&[
                "GET /app HTTP/1.1",
                host,
                "Connection: Upgrade",
                "Upgrade: alpn",
            ]),
            404,
            "/app is not an upgrade path",
        ),
    ];
    for (what, raw, status, reason) in cases {
        let r = exchange(s.listener, raw);
        assert_refused(&r, *status, reason, what);
        if *status == 405 {
            assert_eq!(r.header("allow"), Some("GET"), "{what}");
        }
    }
    // Where the request itself was an upgrade, the 426 names the allowed list.
    let r = exchange(
        s.listener,
        &request(&[up, host, "Connection: Upgrade", "Upgrade: ssh"]),
    );
    assert_eq!(r.header("upgrade"), Some("alpn, alpn-ping, websocket"));
    assert!(
        s.router.heads().is_empty(),
        "a refused request reached the router: {:?}",
        s.router.heads()
    );
}

#[test]
fn policy_refusals_use_the_client_address_behind_the_load_balancer() {
    let s = setup(concat!(
        r#"{"trusted_hops": 1, "trusted_proxies": ["127.0.0.1"], "allowed_types": ["alpn", "alpn-ping"], "#,
        r#""allowed_sources": ["203.0.113.0/24"], "#,
        r#""rate_limit": {"upgrades": 2, "per_seconds": 3600}}"#
    ));
    let upgrade = |xff: &str| {
        exchange(
            s.listener,
            &request(&[
                "GET /connectionupgrade HTTP/1.1",
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: alpn",
                &format!("X-Forwarded-For: {xff}"),
            ]),
        )
    };
    assert_refused(
        &upgrade("198.51.100.1"),
        403,
        "tunnels from 198.51.100.1 are not allowed",
        "outside the allow-list",
    );
    // A client cannot sneak in by prepending an allowed address: the load balancer's entry counts.
    assert_refused(
        &upgrade("203.0.113.7, 198.51.100.1"),
        403,
        "198.51.100.1",
        "spoofed allowed address",
    );
    assert_eq!(upgrade("203.0.113.7").status, 101);
    assert_eq!(upgrade("203.0.113.7").status, 101);
    let limited = upgrade("203.0.113.7");
    assert_refused(
        &limited,
        429,
        "too many upgrades from 203.0.113.7",
        "third upgrade",
    );
    assert!(limited
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|v| v > 0));
    assert_eq!(
        upgrade("203.0.113.8").status,
        101,
        "another client has its own bucket"
    );
    // A type the connection manager accepts but the filter does not: 426 from the
    // filter, with the filter's own list.
    let ws = exchange(
        s.listener,
        &request(&[
            "GET /connectionupgrade HTTP/1.1",
            "Host: t",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "X-Forwarded-For: 203.0.113.9",
        ]),
    );
    assert_refused(
        &ws,
        426,
        "upgrade type \"websocket\" is not allowed",
        "websocket not allowed",
    );
    assert_eq!(ws.header("upgrade"), Some("alpn, alpn-ping"));
    assert!(
        s.envoy
            .log()
            .contains("refused GET /connectionupgrade with 403 source_not_allowed"),
        "the refusal is logged"
    );
}

#[test]
fn an_approved_alpn_upgrade_reaches_the_router_and_bytes_flow_both_ways() {
    let s = setup(SHIPPED_FILTER_CONFIG);
    let mut conn = http::connect(s.listener);
    conn.write_all(&request(&[
        "GET /connectionupgrade HTTP/1.1",
        "Host: tunnel.example",
        "Connection: Upgrade",
        "Upgrade: alpn",
        "X-Forwarded-For: 6.6.6.6, 203.0.113.5",
        "X-Alpn-Client-Addr: 6.6.6.6",
    ]))
    .unwrap();
    let answer = http::read_response(&mut conn);
    assert_eq!(answer.status, 101, "{answer:?}");
    assert_eq!(answer.header("upgrade"), Some("alpn"));

    // Envoy's connection manager does not half-close an upgraded stream (a FIN
    // from the client ends it), so the client reads the whole echo before closing.
    let sent = payload(4 << 20, 0x9e37_79b9_7f4a_7c15);
    let mut writer = conn.try_clone().unwrap();
    let to_send = sent.clone();
    let send = thread::spawn(move || writer.write_all(&to_send).unwrap());
    let mut received = vec![0u8; sent.len()];
    conn.read_exact(&mut received).expect("read the whole echo");
    send.join().unwrap();
    assert!(received == sent, "the echoed bytes differ");

    let heads = s.router.heads();
    assert_eq!(heads.len(), 1);
    let client_addr: Vec<&str> = heads[0]
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-alpn-client-addr:"))
        .collect();
    assert_eq!(
        client_addr,
        ["x-alpn-client-addr: 203.0.113.5"],
        "the spoofed header must be replaced"
    );
}

#[test]
fn websocket_and_alpn_ping_upgrades_are_approved() {
    let s = setup(SHIPPED_FILTER_CONFIG);
    for (kind, extra) in [
        ("alpn-ping", vec![]),
        (
            "websocket",
            vec![
                "Sec-WebSocket-Version: 13".to_string(),
                format!("Sec-WebSocket-Key: {KEY}"),
                "Sec-WebSocket-Protocol: alpn-ping".into(),
            ],
        ),
    ] {
        let mut lines = vec![
            "GET /connectionupgrade HTTP/1.1".to_string(),
            "Host: t".into(),
            "Connection: Upgrade".into(),
            format!("Upgrade: {kind}"),
        ];
        lines.extend(extra);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let r = exchange(s.listener, &request(&lines));
        assert_eq!(
            (r.status, r.header("upgrade")),
            (101, Some(kind)),
            "{kind}: {r:?}"
        );
    }
}

#[test]
fn ordinary_requests_reach_the_web_upstream_unchanged() {
    let s = setup(SHIPPED_FILTER_CONFIG);
    let sent_headers = [
        "X-Alpn-Client-Addr: 6.6.6.6",
        "X-Custom: kept as is",
        "Accept: text/html",
    ];
    let mut lines = vec!["GET /index.html?q=1 HTTP/1.1", "Host: app.example"];
    lines.extend(sent_headers);
    let r = exchange(s.listener, &request(&lines));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.text();
    assert!(
        seen.starts_with("GET /index.html?q=1 HTTP/1.1\r\n"),
        "{seen}"
    );
    for h in sent_headers {
        assert!(
            seen.to_ascii_lowercase().contains(&h.to_ascii_lowercase()),
            "{h:?} did not arrive as sent:\n{seen}"
        );
    }

    let body = "name=value&other=1";
    let post = format!("POST /api/items HTTP/1.1\r\nHost: app.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let r = exchange(s.listener, post.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.text().starts_with("POST /api/items HTTP/1.1\r\n") && r.text().ends_with(body),
        "{}",
        r.text()
    );

    // The web application's own WebSocket on its own path is not the filter's business.
    let r = exchange(
        s.listener,
        &request(&[
            "GET /chat HTTP/1.1",
            "Host: app.example",
            "Connection: Upgrade",
            "Upgrade: websocket",
        ]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let heads = s.web.heads();
    assert_eq!(heads.len(), 3);
    assert!(
        heads[2].starts_with("GET /chat HTTP/1.1")
            && heads[2].to_ascii_lowercase().contains("upgrade: websocket"),
        "{}",
        heads[2]
    );
    assert!(s.router.heads().is_empty());
}

#[test]
fn the_metrics_appear_on_stats() {
    let s = setup(SHIPPED_FILTER_CONFIG);
    let alpn = request(&[
        "GET /connectionupgrade HTTP/1.1",
        "Host: t",
        "Connection: Upgrade",
        "Upgrade: alpn",
    ]);
    for _ in 0..2 {
        assert_eq!(exchange(s.listener, &alpn).status, 101);
    }
    assert_eq!(
        exchange(
            s.listener,
            &request(&[
                "PUT /connectionupgrade HTTP/1.1",
                "Host: t",
                "Content-Length: 0"
            ])
        )
        .status,
        405
    );
    assert_eq!(
        exchange(
            s.listener,
            &request(&[
                "GET /x HTTP/1.1",
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: alpn-ping"
            ])
        )
        .status,
        404
    );
    assert_eq!(
        exchange(s.listener, &request(&["GET / HTTP/1.1", "Host: t"])).status,
        200
    );
    for (name, want) in [
        ("wasmcustom.alpn_upgrade.approved.alpn", 2),
        ("wasmcustom.alpn_upgrade.approved.websocket", 0),
        ("wasmcustom.alpn_upgrade.refused.method_not_allowed", 1),
        ("wasmcustom.alpn_upgrade.refused.wrong_path", 1),
        ("wasmcustom.alpn_upgrade.refused.no_upgrade", 0),
    ] {
        assert_eq!(s.envoy.counter(name), Some(want), "{name}");
    }
}

#[test]
fn only_requests_that_can_concern_the_filter_enter_the_wasm_vm() {
    let s = setup(SHIPPED_FILTER_CONFIG);
    // Counted by the filter when Envoy creates a stream's context in the VM, which
    // precedes every other call into the VM for that stream (the access log too).
    let streams = || s.envoy.counter("wasmcustom.alpn_upgrade.streams");

    let ordinary = [
        request(&["GET /index.html?q=1 HTTP/1.1", "Host: app.example"]),
        request(&["GET /connection HTTP/1.1", "Host: app.example"]),
        request(&["GET /app/connectionupgrade HTTP/1.1", "Host: app.example"]),
        b"POST /api/items HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
    ];
    for _ in 0..5 {
        for raw in &ordinary {
            assert_eq!(exchange(s.listener, raw).status, 200);
        }
    }
    assert_eq!(
        s.web.heads().len(),
        20,
        "every ordinary request reached the web upstream"
    );
    assert_eq!(streams(), Some(0), "ordinary requests entered the Wasm VM");

    // A WebSocket upgrade elsewhere belongs to the web application: it passes
    // without the filter.
    let websocket = request(&[
        "GET /chat HTTP/1.1",
        "Host: t",
        "Connection: Upgrade",
        "Upgrade: websocket",
    ]);
    assert_eq!(exchange(s.listener, &websocket).status, 200);
    assert_eq!(
        s.web.heads().len(),
        21,
        "the WebSocket upgrade reached the web upstream"
    );
    assert_eq!(
        streams(),
        Some(0),
        "a WebSocket upgrade elsewhere entered the Wasm VM"
    );

    let concerning: [(&str, Vec<u8>, u16); 5] = [
        (
            "an alpn upgrade on another path",
            request(&[
                "GET /app HTTP/1.1",
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: alpn",
            ]),
            404,
        ),
        (
            "X-Alpn-Upgrade alone on another path",
            request(&["GET /app HTTP/1.1", "Host: t", "X-Alpn-Upgrade: alpn"]),
            404,
        ),
        (
            "the upgrade path with a query, no upgrade",
            request(&["GET /connectionupgrade?x=1 HTTP/1.1", "Host: t"]),
            426,
        ),
        (
            "an alpn-ping upgrade on another path, in capitals",
            request(&[
                "GET /app HTTP/1.1",
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: ALPN-Ping",
            ]),
            404,
        ),
        (
            "an alpn upgrade on the upgrade path",
            request(&[
                "GET /connectionupgrade HTTP/1.1",
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: alpn",
            ]),
            101,
        ),
    ];
    for (n, (what, raw, status)) in concerning.iter().enumerate() {
        assert_eq!(exchange(s.listener, raw).status, *status, "{what}");
        let n = Some(n as u64 + 1);
        assert_eq!(streams(), n, "{what} did not enter the Wasm VM");
    }
}

#[test]
fn a_bad_plugin_configuration_makes_envoy_refuse_it_naming_the_key() {
    for (config, key) in [
        (r#"{"trusted_hops": 1, "bogus_key": 2}"#, "bogus_key"),
        // Believing X-Forwarded-For from anyone is not a configuration Envoy runs.
        (r#"{"trusted_hops": 1}"#, "\"trusted_proxies\": required"),
        (
            r#"{"allowed_sources": ["10.0.0.0/33"]}"#,
            "\"allowed_sources\"[0]",
        ),
        (
            r#"{"rate_limit": {"upgrades": "ten", "per_seconds": 60}}"#,
            "\"rate_limit.upgrades\"",
        ),
    ] {
        let bootstrap = Bootstrap::shipped("behind-l7.yaml")
            .port(8080, 0)
            .replace(SHIPPED_FILTER_CONFIG, config);
        let (status, log) = Envoy::run_to_exit(&bootstrap, &[]);
        assert!(!status.success(), "envoy accepted {config}");
        let line = log
            .lines()
            .find(|l| l.contains("invalid plugin configuration"))
            .unwrap_or_else(|| panic!("no configuration error logged:\n{log}"));
        assert!(line.contains(key), "{line:?} does not name {key}");
        assert!(
            log.contains("Unable to create Wasm plugin alpn_upgrade"),
            "{log}"
        );
    }
}
