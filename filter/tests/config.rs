//! Configuration parsing: defaults, and errors that name the key.

use alpn_protocol::names::{Subprotocol, UpgradeType};
use alpn_upgrade_filter::config::Config;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test(unsupported = test)]
fn absent_or_empty_configuration_means_the_defaults() {
    let d = Config::default();
    assert_eq!(Config::parse(b"").unwrap(), d);
    assert_eq!(Config::parse(b"  \n").unwrap(), d);
    assert_eq!(Config::parse(b"{}").unwrap(), d);
    assert_eq!(d.names.upgrade_paths, ["/connectionupgrade"]);
    assert_eq!(d.names.allowed_list(), "alpn, alpn-ping, websocket");
    assert_eq!(d.names.duplicate_upgrade_header, "x-alpn-upgrade");
    assert_eq!(d.names.client_addr_header, "x-alpn-client-addr");
}

#[wasm_bindgen_test(unsupported = test)]
fn every_key_is_accepted() {
    let c = Config::parse(
        br#"{"upgrade_paths": ["/a", "/b"], "type_tokens": {"alpn": "TCP", "alpn_ping": "tcp-ping", "websocket": "websocket"},
            "allowed_types": ["tcp", "WebSocket"], "subprotocol_tokens": {"alpn": "raw", "alpn_ping": "pinged"},
            "websocket_subprotocols": ["pinged"],
            "duplicate_upgrade_header": "X-Dup", "client_addr_header": "X-Client", "trusted_hops": 1,
            "trusted_proxies": ["10.0.0.0/16", "192.0.2.1", "2001:db8::/32"],
            "allowed_sources": ["10.0.0.0/8", "192.0.2.1"], "rate_limit": {"upgrades": 5, "per_seconds": 60, "slots": 16}}"#,
    )
    .unwrap();
    assert_eq!(
        c.names.allowed_types,
        [UpgradeType::Alpn, UpgradeType::WebSocket]
    );
    assert_eq!(c.names.allowed_list(), "tcp, websocket");
    assert_eq!(c.names.websocket_subprotocols, [Subprotocol::AlpnPing]);
    assert_eq!(c.names.subprotocol_token(Subprotocol::Alpn), "raw");
    assert_eq!(c.names.duplicate_upgrade_header, "x-dup");
    assert_eq!(c.trusted_hops, 1);
    assert_eq!(c.trusted_proxies.len(), 3);
    assert_eq!(c.allowed_sources.unwrap().len(), 2);
    assert_eq!(c.rate_limit.unwrap().slots, 16);
}

#[wasm_bindgen_test(unsupported = test)]
fn errors_name_the_key() {
    for (json, key) in [
        (r#"{"upgrade_path": ["/x"]}"#, "upgrade_path"),
        (r#"{"upgrade_paths": ["x"]}"#, "upgrade_paths"),
        (r#"{"upgrade_paths": []}"#, "upgrade_paths"),
        (r#"{"allowed_types": ["al pn"]}"#, "allowed_types"),
        (r#"{"allowed_types": ["alpn", "ALPN"]}"#, "allowed_types[1]"),
        (r#"{"allowed_types": ["chat"]}"#, "allowed_types[0]"),
        (
            r#"{"type_tokens": {"alpn": "tcp"}, "allowed_types": ["alpn"]}"#,
            "allowed_types[0]",
        ),
        (
            r#"{"type_tokens": {"alpn_ping": "websocket"}}"#,
            "type_tokens.alpn_ping",
        ),
        (r#"{"type_tokens": {"ssh": "x"}}"#, "ssh"),
        (
            r#"{"subprotocol_tokens": {"alpn": "a b"}}"#,
            "subprotocol_tokens.alpn",
        ),
        (
            r#"{"websocket_subprotocols": ["alpn", "x"]}"#,
            "websocket_subprotocols[1]",
        ),
        (
            r#"{"client_addr_header": "bad header"}"#,
            "client_addr_header",
        ),
        (r#"{"allowed_sources": ["10.0.0.0/33"]}"#, "allowed_sources"),
        (r#"{"trusted_hops": -1}"#, "\"trusted_hops\""),
        (
            r#"{"trusted_hops": 1, "trusted_proxies": ["10.0.0.0/8", "alb"]}"#,
            "\"trusted_proxies\"[1]",
        ),
        (
            r#"{"trusted_hops": 1, "trusted_proxies": ["10.0.0.0/8", "::/129"]}"#,
            "\"trusted_proxies\"[1]",
        ),
        (
            r#"{"trusted_hops": 1, "trusted_proxies": "10.0.0.0/8"}"#,
            "\"trusted_proxies\"",
        ),
        (
            r#"{"trusted_hops": 1, "trusted_proxies": []}"#,
            "\"trusted_proxies\"",
        ),
        (r#"{"trusted_proxy": ["10.0.0.0/8"]}"#, "trusted_proxy"),
        (
            r#"{"rate_limit": {"upgrades": "many", "per_seconds": 1}}"#,
            "\"rate_limit.upgrades\"",
        ),
        (
            r#"{"rate_limit": {"upgrades": 0, "per_seconds": 1}}"#,
            "rate_limit.upgrades",
        ),
        (
            r#"{"rate_limit": {"upgrades": 1, "per_second": 1}}"#,
            "per_second",
        ),
    ] {
        let err = Config::parse(json.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(key), "{json}: {err:?} does not name {key}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn a_value_of_the_wrong_type_is_refused() {
    let err = Config::parse(br#"{"trusted_hops": -1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid value: integer `-1`"), "{err}");
    let err = Config::parse(br#"{"upgrade_paths": "/x"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"upgrade_paths\"") && err.contains("expected a sequence"),
        "{err}"
    );
    let err = Config::parse(b"[1]").unwrap_err().to_string();
    assert!(err.starts_with("invalid plugin configuration"), "{err}");
}

#[wasm_bindgen_test(unsupported = test)]
fn trusted_hops_without_trusted_proxies_is_refused_never_trusting_everyone() {
    for json in [
        r#"{"trusted_hops": 1}"#,
        r#"{"trusted_hops": 2, "allowed_sources": ["10.0.0.0/8"]}"#,
    ] {
        let err = Config::parse(json.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("key \"trusted_proxies\": required when trusted_hops is"),
            "{json}: {err}"
        );
        assert!(err.contains("X-Forwarded-For"), "{json}: {err}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn trusted_proxies_without_trusted_hops_is_refused_as_having_no_effect() {
    for json in [
        r#"{"trusted_proxies": ["10.0.0.0/8"]}"#,
        r#"{"trusted_hops": 0, "trusted_proxies": ["10.0.0.0/8"]}"#,
    ] {
        let err = Config::parse(json.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("key \"trusted_proxies\": has no effect with trusted_hops 0"),
            "{json}: {err}"
        );
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn trusted_proxies_are_blocks_or_single_addresses() {
    let c = Config::parse(
        br#"{"trusted_hops": 1, "trusted_proxies": ["10.0.0.0/8", "127.0.0.1", "::1", "::ffff:172.16.0.0/108"]}"#,
    )
    .unwrap();
    let shown: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    // A bare address is that one host; a mapped block is the IPv4 block.
    assert_eq!(
        shown,
        ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "172.16.0.0/12"]
    );
    assert_eq!(Config::default().trusted_proxies, []);
}
