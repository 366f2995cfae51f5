//! The TLS bootstraps, live: `behind-l7-tls.yaml` serves upgrades over HTTPS from
//! the load balancer, and `direct.yaml` splits one TLS port by ALPN (http/1.1 to
//! the connection manager and the filter, any other ALPN passed through untouched
//! to the router's direct TLS port).

use std::io::{Read, Write};

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::stubs;
use integration_tests::tls::{negotiated, ServerCert, TlsStream};

fn send(stream: &mut TlsStream, lines: &[&str]) {
    stream
        .write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())
        .unwrap();
    stream.flush().unwrap();
}

/// Reads a response head from a TLS stream, a byte at a time (heads are small).
fn response(stream: &mut TlsStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .expect("read the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head)
}

fn upgrade(stream: &mut TlsStream, xff: &str) -> u16 {
    send(
        stream,
        &[
            "GET /connectionupgrade HTTP/1.1",
            "Host: envoy.test",
            "Connection: Upgrade",
            "Upgrade: alpn",
            &format!("X-Forwarded-For: {xff}"),
            "X-Alpn-Client-Addr: 6.6.6.6",
        ],
    );
    response(stream).0
}

fn echo(stream: &mut TlsStream) {
    let sent: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    stream.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    stream.read_exact(&mut back).expect("read the echo");
    assert!(back == sent, "the echo differs");
}

fn client_addr_seen(router: &stubs::Stub) -> Vec<String> {
    router
        .heads()
        .iter()
        .flat_map(|h| {
            h.lines()
                .filter(|l| l.starts_with("x-alpn-client-addr:"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn behind_l7_tls_serves_upgrades_and_web_traffic_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = ServerCert::generate(dir.path());
    let router = stubs::router();
    let web = stubs::web();
    let envoy = Envoy::start(
        &Bootstrap::shipped("behind-l7-tls.yaml")
            .certificate(&cert)
            .port(8443, 0)
            .port(9001, router.addr.port())
            .port(8081, web.addr.port()),
    );
    let addr = envoy.listener("web");

    let mut tunnel = cert.connect(addr, &["http/1.1"]).expect("TLS to Envoy");
    assert_eq!(negotiated(&tunnel).as_deref(), Some("http/1.1"));
    assert_eq!(upgrade(&mut tunnel, "203.0.113.5"), 101);
    echo(&mut tunnel);
    assert_eq!(
        client_addr_seen(&router),
        ["x-alpn-client-addr: 203.0.113.5"]
    );

    let mut page = cert.connect(addr, &["http/1.1"]).expect("TLS to Envoy");
    send(&mut page, &["GET /index.html HTTP/1.1", "Host: envoy.test"]);
    assert_eq!(response(&mut page).0, 200);
    assert_eq!(web.heads().len(), 1);
}

#[test]
fn direct_splits_one_tls_port_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let cert = ServerCert::generate(dir.path());
    let router = stubs::router();
    let router_direct = stubs::recorder();
    let web = stubs::web();
    let envoy = Envoy::start(
        &Bootstrap::shipped("direct.yaml")
            .certificate(&cert)
            .port(443, 0)
            .port(9001, router.addr.port())
            .port(9443, router_direct.addr.port())
            .port(8081, web.addr.port()),
    );
    let addr = envoy.listener("tls");

    // http/1.1: Envoy terminates TLS; with no load balancer the client address
    // is the TCP peer, whatever X-Forwarded-For claims.
    let mut tunnel = cert.connect(addr, &["http/1.1"]).expect("TLS to Envoy");
    assert_eq!(negotiated(&tunnel).as_deref(), Some("http/1.1"));
    assert_eq!(upgrade(&mut tunnel, "6.6.6.6"), 101);
    echo(&mut tunnel);
    assert_eq!(client_addr_seen(&router), ["x-alpn-client-addr: 127.0.0.1"]);

    let mut page = cert.connect(addr, &["http/1.1"]).expect("TLS to Envoy");
    send(&mut page, &["GET / HTTP/1.1", "Host: envoy.test"]);
    assert_eq!(response(&mut page).0, 200);
    assert_eq!(web.heads().len(), 1);

    // Any other ALPN: the ClientHello itself reaches the router's direct port,
    // TLS untouched (the recorder then hangs up, so the handshake fails here).
    let refused = cert.connect(addr, &["postgresql"]);
    assert!(refused.is_err(), "the recorder does not speak TLS");
    let seen = router_direct.heads();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let hello = seen[0].as_bytes();
    assert_eq!(
        &hello[..2],
        b"\x16\x03",
        "not a TLS record: {:?}",
        &hello[..8.min(hello.len())]
    );
    assert!(
        seen[0].contains("postgresql") && seen[0].contains("envoy.test"),
        "ALPN and SNI must arrive untouched"
    );
    assert_eq!(
        router.heads().len(),
        1,
        "only the upgrade reached the router's upgrade listener"
    );
}
