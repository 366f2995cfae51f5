//! The decision over a table of requests, valid and malformed. Runs as ordinary
//! tests on the host and, compiled to wasm32, under `wasm-bindgen-test-runner`.

use std::net::IpAddr;

use alpn_protocol::client_addr;
use alpn_protocol::request::Request;
use alpn_upgrade_filter::config::Config;
use alpn_upgrade_filter::decision::{decide, Approval, RefusalKind, Verdict};
use alpn_upgrade_filter::rate_limit::MemoryStore;
use wasm_bindgen_test::wasm_bindgen_test;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const PEER: &str = "10.0.0.2";

/// What a case expects.
#[derive(Debug, Clone, Copy)]
enum Want {
    Pass,
    Approve(&'static str, Option<&'static str>),
    Refuse(RefusalKind, u32),
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Want,
}

const UP: &str = "/connectionupgrade";
const ALPN: &[(&str, &str)] = &[("connection", "Upgrade"), ("upgrade", "alpn")];

fn c(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Want,
) -> Case {
    Case {
        name,
        method,
        path,
        headers,
        want,
    }
}

fn cases() -> Vec<Case> {
    use RefusalKind::*;
    use Want::*;
    vec![
        c("plain alpn upgrade", "GET", UP, ALPN, Approve("alpn", None)),
        c(
            "alpn-ping upgrade",
            "GET",
            UP,
            &[("connection", "upgrade"), ("upgrade", "alpn-ping")],
            Approve("alpn-ping", None),
        ),
        c(
            "query string is ignored",
            "GET",
            "/connectionupgrade?x=1",
            ALPN,
            Approve("alpn", None),
        ),
        c(
            "Connection with other tokens",
            "GET",
            UP,
            &[("connection", "keep-alive, Upgrade"), ("upgrade", "alpn")],
            Approve("alpn", None),
        ),
        c(
            "Connection token upper case",
            "GET",
            UP,
            &[("connection", "UPGRADE"), ("upgrade", "alpn")],
            Approve("alpn", None),
        ),
        c(
            "Upgrade value in mixed case",
            "GET",
            UP,
            &[("connection", "Upgrade"), ("upgrade", "ALPN-Ping")],
            Approve("alpn-ping", None),
        ),
        c(
            "header names in mixed case",
            "GET",
            UP,
            &[("Connection", "Upgrade"), ("UPGRADE", "alpn")],
            Approve("alpn", None),
        ),
        c(
            "Connection split over two lines",
            "GET",
            UP,
            &[
                ("connection", "keep-alive"),
                ("connection", "upgrade"),
                ("upgrade", "alpn"),
            ],
            Approve("alpn", None),
        ),
        c(
            "scrubbed Upgrade, duplicate header",
            "GET",
            UP,
            &[("connection", "Upgrade"), ("x-alpn-upgrade", "alpn")],
            Approve("alpn", None),
        ),
        c(
            "duplicate header agrees",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "alpn"),
                ("X-Alpn-Upgrade", "ALPN"),
            ],
            Approve("alpn", None),
        ),
        c(
            "Content-Length 0 is no body",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "alpn"),
                ("content-length", "0"),
            ],
            Approve("alpn", None),
        ),
        c(
            "websocket with alpn subprotocol",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-protocol", "alpn"),
            ],
            Approve("websocket", Some("alpn")),
        ),
        c(
            "websocket picks the client's first allowed subprotocol",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "WebSocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-protocol", "chat, alpn-ping, alpn"),
            ],
            Approve("websocket", Some("alpn-ping")),
        ),
        c(
            "ordinary page",
            "GET",
            "/index.html",
            &[("accept", "text/html")],
            Pass,
        ),
        c(
            "ordinary POST elsewhere",
            "POST",
            "/api",
            &[("content-length", "12")],
            Pass,
        ),
        c(
            "the web app's own websocket elsewhere",
            "GET",
            "/chat",
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            Pass,
        ),
        c(
            "a longer path is another path",
            "GET",
            "/connectionupgrade/x",
            &[("accept", "*/*")],
            Pass,
        ),
        c(
            "alpn upgrade on another path",
            "GET",
            "/other",
            ALPN,
            Refuse(WrongPath, 404),
        ),
        c(
            "alpn-ping via the duplicate header on another path",
            "GET",
            "/",
            &[("x-alpn-upgrade", "alpn-ping")],
            Refuse(WrongPath, 404),
        ),
        c(
            "POST on the upgrade path",
            "POST",
            UP,
            ALPN,
            Refuse(MethodNotAllowed, 405),
        ),
        c(
            "HEAD on the upgrade path",
            "HEAD",
            UP,
            ALPN,
            Refuse(MethodNotAllowed, 405),
        ),
        c(
            "methods are case-sensitive",
            "get",
            UP,
            ALPN,
            Refuse(MethodNotAllowed, 405),
        ),
        c(
            "no upgrade at all",
            "GET",
            UP,
            &[("accept", "*/*")],
            Refuse(NoUpgrade, 426),
        ),
        c(
            "Connection: upgrade but no Upgrade",
            "GET",
            UP,
            &[("connection", "Upgrade")],
            Refuse(NoUpgrade, 426),
        ),
        c(
            "unknown type",
            "GET",
            UP,
            &[("connection", "Upgrade"), ("upgrade", "h2c")],
            Refuse(TypeNotAllowed, 426),
        ),
        c(
            "unknown type in the duplicate header",
            "GET",
            UP,
            &[("connection", "Upgrade"), ("x-alpn-upgrade", "ssh")],
            Refuse(TypeNotAllowed, 426),
        ),
        c(
            "two Upgrade values in one line",
            "GET",
            UP,
            &[("connection", "Upgrade"), ("upgrade", "alpn, websocket")],
            Refuse(SeveralUpgrades, 400),
        ),
        c(
            "two Upgrade lines",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "alpn"),
                ("upgrade", "alpn-ping"),
            ],
            Refuse(SeveralUpgrades, 400),
        ),
        c(
            "duplicate header disagrees",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "alpn"),
                ("x-alpn-upgrade", "websocket"),
            ],
            Refuse(UpgradeMismatch, 400),
        ),
        c(
            "Connection without the upgrade token",
            "GET",
            UP,
            &[("connection", "keep-alive"), ("upgrade", "alpn")],
            Refuse(ConnectionLacksUpgrade, 400),
        ),
        c(
            "no Connection header",
            "GET",
            UP,
            &[("upgrade", "alpn")],
            Refuse(ConnectionLacksUpgrade, 400),
        ),
        c(
            "a token containing 'upgrade' is not the token",
            "GET",
            UP,
            &[("connection", "upgraded"), ("upgrade", "alpn")],
            Refuse(ConnectionLacksUpgrade, 400),
        ),
        c(
            "Upgrade and Connection both scrubbed",
            "GET",
            UP,
            &[("x-alpn-upgrade", "alpn")],
            Refuse(ConnectionLacksUpgrade, 400),
        ),
        c(
            "Content-Length body",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "alpn"),
                ("content-length", "5"),
            ],
            Refuse(Body, 400),
        ),
        c(
            "chunked body",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "alpn"),
                ("transfer-encoding", "chunked"),
            ],
            Refuse(Body, 400),
        ),
        c(
            "websocket without version",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-protocol", "alpn"),
            ],
            Refuse(WebSocketVersion, 400),
        ),
        c(
            "websocket version 8",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "8"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-protocol", "alpn"),
            ],
            Refuse(WebSocketVersion, 400),
        ),
        c(
            "websocket key not base64",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "not a key!"),
                ("sec-websocket-protocol", "alpn"),
            ],
            Refuse(WebSocketKey, 400),
        ),
        c(
            "websocket key of 15 bytes",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAA"),
                ("sec-websocket-protocol", "alpn"),
            ],
            Refuse(WebSocketKey, 400),
        ),
        c(
            "websocket without key",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-protocol", "alpn"),
            ],
            Refuse(WebSocketKey, 400),
        ),
        c(
            "websocket without subprotocol",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", KEY),
            ],
            Refuse(WebSocketSubprotocol, 400),
        ),
        c(
            "websocket with an unknown subprotocol",
            "GET",
            UP,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-protocol", "chat"),
            ],
            Refuse(WebSocketSubprotocol, 400),
        ),
    ]
}

fn run(config: &Config, case: &Case, client: Option<IpAddr>, store: &mut MemoryStore) -> Verdict {
    let headers: Vec<(String, String)> = case
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let req = Request {
        method: case.method,
        path: case.path,
        headers: &headers,
    };
    decide(&req, config, client, store, 1_000_000)
}

fn check(case: &Case, verdict: &Verdict) {
    match (&case.want, verdict) {
        (Want::Pass, Verdict::Pass) => {}
        (
            Want::Approve(t, sub),
            Verdict::Approve(Approval {
                upgrade_type,
                subprotocol,
                ..
            }),
        ) if upgrade_type.default_token() == *t
            && subprotocol.map(|s| s.default_token()) == *sub => {}
        (Want::Refuse(kind, status), Verdict::Refuse(r))
            if r.kind == *kind && r.kind.status() == *status =>
        {
            assert!(
                !r.reason.is_empty() && !r.reason.contains('\n'),
                "{}: the reason must be one line",
                case.name
            );
        }
        (want, got) => panic!("case {:?}: wanted {want:?}, got {got:?}", case.name),
    }
}

fn by_name(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

#[wasm_bindgen_test(unsupported = test)]
fn the_table_has_at_least_thirty_cases_and_each_decides_as_expected() {
    let config = Config::default();
    let table = cases();
    assert!(table.len() >= 30, "only {} cases", table.len());
    let peer: IpAddr = PEER.parse().unwrap();
    for case in &table {
        check(
            case,
            &run(&config, case, Some(peer), &mut MemoryStore::default()),
        );
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn refusals_carry_the_headers_protocol_md_names() {
    let config = Config::default();
    let mut store = MemoryStore::default();
    let Verdict::Refuse(r) = run(&config, &by_name("unknown type"), None, &mut store) else {
        panic!()
    };
    assert!(r
        .headers
        .contains(&("upgrade", "alpn, alpn-ping, websocket".into())));
    assert!(r.body().ends_with('\n') && r.body().contains("h2c"));
    let Verdict::Refuse(r) = run(
        &config,
        &by_name("POST on the upgrade path"),
        None,
        &mut store,
    ) else {
        panic!()
    };
    assert!(r.headers.contains(&("allow", "GET".into())));
}

#[wasm_bindgen_test(unsupported = test)]
fn a_spoofed_client_address_does_not_decide_the_client() {
    // The client sends its own X-Forwarded-For and X-Alpn-Client-Addr; behind one
    // trusted load balancer only the entry that balancer appended counts.
    let headers = vec![
        (
            "x-forwarded-for".to_string(),
            "6.6.6.6, 203.0.113.9".to_string(),
        ),
        ("x-alpn-client-addr".to_string(), "6.6.6.6".to_string()),
    ];
    let req = Request {
        method: "GET",
        path: UP,
        headers: &headers,
    };
    let peer = Some(PEER.parse().unwrap());
    let lb = [ipnet::IpNet::from(PEER.parse::<IpAddr>().unwrap())];
    assert_eq!(
        client_addr::derive(req.values("x-forwarded-for"), peer, 1, &lb),
        Some("203.0.113.9".parse().unwrap())
    );
    assert_eq!(
        client_addr::derive(req.values("x-forwarded-for"), peer, 0, &[]),
        peer
    );
    // Nor from a peer that is not the load balancer.
    let stranger = Some("198.51.100.77".parse().unwrap());
    assert_eq!(
        client_addr::derive(req.values("x-forwarded-for"), stranger, 1, &lb),
        stranger
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn sources_outside_the_allow_list_get_403() {
    let config =
        Config::parse(br#"{"allowed_sources": ["203.0.113.0/24", "2001:db8::/32"]}"#).unwrap();
    let upgrade = cases()[0];
    let mut store = MemoryStore::default();
    for (client, want) in [
        (Some("203.0.113.9"), Want::Approve("alpn", None)),
        (Some("2001:db8::1"), Want::Approve("alpn", None)),
        (Some("::ffff:203.0.113.9"), Want::Approve("alpn", None)),
        (
            Some("198.51.100.1"),
            Want::Refuse(RefusalKind::SourceNotAllowed, 403),
        ),
        (None, Want::Refuse(RefusalKind::SourceNotAllowed, 403)),
    ] {
        let client = client.and_then(client_addr::parse_addr);
        check(
            &Case { want, ..upgrade },
            &run(&config, &upgrade, client, &mut store),
        );
    }
    // The allow-list guards the upgrade path only; other traffic still passes.
    let page = by_name("ordinary page");
    check(
        &page,
        &run(
            &config,
            &page,
            Some("198.51.100.1".parse().unwrap()),
            &mut store,
        ),
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn the_rate_limit_refuses_with_429_per_client() {
    let config = Config::parse(br#"{"rate_limit": {"upgrades": 2, "per_seconds": 10}}"#).unwrap();
    let upgrade = cases()[0];
    let mut store = MemoryStore::default();
    let a = Some("203.0.113.9".parse().unwrap());
    let b = Some("203.0.113.10".parse().unwrap());
    check(&upgrade, &run(&config, &upgrade, a, &mut store));
    check(&upgrade, &run(&config, &upgrade, a, &mut store));
    let Verdict::Refuse(r) = run(&config, &upgrade, a, &mut store) else {
        panic!("third upgrade allowed")
    };
    assert_eq!((r.kind, r.kind.status()), (RefusalKind::RateLimited, 429));
    assert!(
        r.headers.contains(&("retry-after", "5".into())),
        "{:?}",
        r.headers
    );
    check(&upgrade, &run(&config, &upgrade, b, &mut store));
}

#[wasm_bindgen_test(unsupported = test)]
fn custom_names_are_honoured() {
    let config = Config::parse(
        br#"{"upgrade_paths": ["/tunnel"], "allowed_types": ["alpn"], "duplicate_upgrade_header": "X-Tunnel-Type"}"#,
    )
    .unwrap();
    let mut store = MemoryStore::default();
    for case in [
        c(
            "custom path and header",
            "GET",
            "/tunnel",
            &[("connection", "upgrade"), ("x-tunnel-type", "alpn")],
            Want::Approve("alpn", None),
        ),
        c(
            "the default path is now elsewhere",
            "GET",
            UP,
            ALPN,
            Want::Refuse(RefusalKind::WrongPath, 404),
        ),
        c(
            "websocket no longer allowed",
            "GET",
            "/tunnel",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            Want::Refuse(RefusalKind::TypeNotAllowed, 426),
        ),
    ] {
        check(&case, &run(&config, &case, None, &mut store));
    }

    // Renamed tokens: the new ones are accepted, PROTOCOL.md's are not.
    let config = Config::parse(
        br#"{"type_tokens": {"alpn": "tcp", "websocket": "ws"}, "subprotocol_tokens": {"alpn_ping": "tcp-ping"}}"#,
    )
    .unwrap();
    const WS: &[(&str, &str)] = &[
        ("connection", "upgrade"),
        ("upgrade", "ws"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", KEY),
        ("sec-websocket-protocol", "chat, tcp-ping"),
    ];
    const WS_OLD_SUBPROTOCOL: &[(&str, &str)] = &[
        ("connection", "upgrade"),
        ("upgrade", "ws"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", KEY),
        ("sec-websocket-protocol", "alpn-ping"),
    ];
    for case in [
        c(
            "renamed alpn",
            "GET",
            UP,
            &[("connection", "upgrade"), ("upgrade", "TCP")],
            Want::Approve("alpn", None),
        ),
        c(
            "the old alpn token",
            "GET",
            UP,
            ALPN,
            Want::Refuse(RefusalKind::TypeNotAllowed, 426),
        ),
        c(
            "renamed websocket and subprotocol",
            "GET",
            UP,
            WS,
            Want::Approve("websocket", Some("alpn-ping")),
        ),
        c(
            "the old subprotocol token",
            "GET",
            UP,
            WS_OLD_SUBPROTOCOL,
            Want::Refuse(RefusalKind::WebSocketSubprotocol, 400),
        ),
        c(
            "the renamed alpn type elsewhere is ours",
            "GET",
            "/app",
            &[("connection", "upgrade"), ("upgrade", "tcp")],
            Want::Refuse(RefusalKind::WrongPath, 404),
        ),
        c(
            "the old alpn token elsewhere is the application's",
            "GET",
            "/app",
            ALPN,
            Want::Pass,
        ),
    ] {
        check(&case, &run(&config, &case, None, &mut store));
    }
    let refusal = match run(
        &config,
        &c("", "GET", UP, &[("connection", "upgrade")], Want::Pass),
        None,
        &mut store,
    ) {
        Verdict::Refuse(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(
        refusal
            .headers
            .contains(&("upgrade", "tcp, alpn-ping, ws".into())),
        "a 426 lists the renamed types: {:?}",
        refusal.headers
    );
}
