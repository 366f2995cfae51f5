//! The client address derived from the TCP peer and `X-Forwarded-For`: believed
//! only through trusted proxies (PROTOCOL.md section 7), walked right to left for
//! at most `trusted_hops` entries.

use std::net::IpAddr;

use alpn_protocol::client_addr::{derive, parse_net, IpNet};
use wasm_bindgen_test::wasm_bindgen_test;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// The networks as configurations parse them (so mapped blocks are canonical).
fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| parse_net(s).unwrap()).collect()
}

/// The load balancer's subnet of these tests.
const LB: &[&str] = &["10.0.0.0/24"];

#[wasm_bindgen_test(unsupported = test)]
fn a_peer_that_is_not_a_trusted_proxy_is_the_client_whatever_it_sends() {
    // The defect of issue 10: a client reaching Envoy directly chose its address.
    let lb = nets(LB);
    assert_eq!(
        derive(["7.7.7.7"], ip("127.0.0.2"), 1, &lb),
        ip("127.0.0.2")
    );
    assert_eq!(
        derive(["7.7.7.7, 10.0.0.5"], ip("198.51.100.4"), 2, &lb),
        ip("198.51.100.4"),
        "even an entry naming a trusted proxy is not believed from an untrusted peer"
    );
    assert_eq!(derive([], ip("198.51.100.4"), 1, &lb), ip("198.51.100.4"));
}

#[wasm_bindgen_test(unsupported = test)]
fn a_trusted_peer_gives_the_entry_it_appended() {
    let lb = nets(LB);
    assert_eq!(
        derive(["6.6.6.6, 203.0.113.7"], ip("10.0.0.1"), 1, &lb),
        ip("203.0.113.7")
    );
    // Several header lines are one list.
    assert_eq!(
        derive(["6.6.6.6", "203.0.113.7"], ip("10.0.0.1"), 1, &lb),
        ip("203.0.113.7")
    );
    // Ports and brackets, as some proxies write them.
    assert_eq!(
        derive(["[2001:db8::7]:5555"], ip("10.0.0.1"), 1, &lb),
        ip("2001:db8::7")
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn no_trusted_hops_means_the_peer() {
    assert_eq!(
        derive(["6.6.6.6"], ip("10.0.0.1"), 0, &nets(LB)),
        ip("10.0.0.1")
    );
    assert_eq!(derive(["6.6.6.6"], ip("10.0.0.1"), 0, &[]), ip("10.0.0.1"));
}

#[wasm_bindgen_test(unsupported = test)]
fn no_trusted_proxies_means_the_peer() {
    // The configuration refuses trusted_hops without trusted_proxies; should the
    // function ever be called so, it trusts nobody rather than everybody.
    assert_eq!(derive(["6.6.6.6"], ip("10.0.0.1"), 1, &[]), ip("10.0.0.1"));
}

#[wasm_bindgen_test(unsupported = test)]
fn an_unknown_peer_is_an_unknown_client() {
    assert_eq!(derive(["203.0.113.7"], None, 1, &nets(LB)), None);
    assert_eq!(derive(["203.0.113.7"], None, 0, &[]), None);
}

#[wasm_bindgen_test(unsupported = test)]
fn the_walk_crosses_each_trusted_proxy_and_stops_at_the_first_other_address() {
    // CDN (192.0.2.0/24) -> ALB (10.0.0.0/24) -> Envoy, trusted_hops 2.
    let both = nets(&["10.0.0.0/24", "192.0.2.0/24"]);
    assert_eq!(
        derive(
            ["6.6.6.6, 203.0.113.7, 192.0.2.9"],
            ip("10.0.0.1"),
            2,
            &both
        ),
        ip("203.0.113.7")
    );
    // Someone bypassing the CDN and reaching the ALB directly, with a forged
    // entry: the ALB appended its real address, which is not a trusted proxy.
    assert_eq!(
        derive(["6.6.6.6, 198.51.100.3"], ip("10.0.0.1"), 2, &both),
        ip("198.51.100.3")
    );
    // trusted_hops bounds the walk even when every entry is a trusted proxy.
    assert_eq!(
        derive(
            ["192.0.2.1, 192.0.2.2, 192.0.2.3"],
            ip("10.0.0.1"),
            2,
            &both
        ),
        ip("192.0.2.2")
    );
    assert_eq!(
        derive(
            ["6.6.6.6, 203.0.113.7, 192.0.2.9"],
            ip("10.0.0.1"),
            1,
            &both
        ),
        ip("192.0.2.9")
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn a_short_or_empty_list_ends_at_the_last_address_reached() {
    let lb = nets(LB);
    assert_eq!(derive([], ip("10.0.0.1"), 1, &lb), ip("10.0.0.1"));
    assert_eq!(derive([""], ip("10.0.0.1"), 1, &lb), ip("10.0.0.1"));
    assert_eq!(derive([" , "], ip("10.0.0.1"), 1, &lb), ip("10.0.0.1"));
    // Two hops trusted but only one entry: it is the client (not a proxy).
    assert_eq!(
        derive(["203.0.113.7"], ip("10.0.0.1"), 2, &lb),
        ip("203.0.113.7")
    );
    // The only entry is itself a trusted proxy: the walk runs out there.
    assert_eq!(derive(["10.0.0.9"], ip("10.0.0.1"), 2, &lb), ip("10.0.0.9"));
}

#[wasm_bindgen_test(unsupported = test)]
fn an_entry_that_is_not_an_address_ends_the_walk() {
    let lb = nets(LB);
    assert_eq!(derive(["nonsense"], ip("10.0.0.1"), 1, &lb), ip("10.0.0.1"));
    assert_eq!(
        derive(["203.0.113.7, unknown"], ip("10.0.0.1"), 2, &lb),
        ip("10.0.0.1")
    );
    assert_eq!(
        derive(["nonsense, 10.0.0.9"], ip("10.0.0.1"), 3, &lb),
        ip("10.0.0.9")
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn ipv6_and_ipv4_mapped_peers_and_blocks() {
    let v6 = nets(&["2001:db8:a::/48"]);
    assert_eq!(
        derive(["203.0.113.7"], ip("2001:db8:a::1"), 1, &v6),
        ip("203.0.113.7")
    );
    assert_eq!(
        derive(["203.0.113.7"], ip("2001:db8:b::1"), 1, &v6),
        ip("2001:db8:b::1")
    );
    // Envoy on a dual-stack socket reports an IPv4 load balancer as
    // ::ffff:10.0.0.1; the filter reads it in canonical form (parse_addr), so an
    // IPv4 block matches it ...
    let peer = alpn_protocol::client_addr::parse_addr("[::ffff:10.0.0.1]:443");
    assert_eq!(peer, ip("10.0.0.1"));
    assert_eq!(
        derive(["203.0.113.7"], peer, 1, &nets(LB)),
        ip("203.0.113.7")
    );
    // ... and a block written in mapped form matches the IPv4 peer.
    assert_eq!(
        derive(
            ["203.0.113.7"],
            ip("10.0.0.1"),
            1,
            &nets(&["::ffff:10.0.0.0/120"])
        ),
        ip("203.0.113.7")
    );
    assert_eq!(
        derive(
            ["203.0.113.7"],
            ip("10.0.1.1"),
            1,
            &nets(&["::ffff:10.0.0.0/120"])
        ),
        ip("10.0.1.1")
    );
    // A mapped entry in X-Forwarded-For is the IPv4 client.
    assert_eq!(
        derive(["::ffff:203.0.113.7"], ip("10.0.0.1"), 1, &nets(LB)),
        ip("203.0.113.7")
    );
}
