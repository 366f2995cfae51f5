//! The inner ClientHello right behind the upgrade request (`--early-hello`):
//! it opens every framing where the hops pass bytes sent before the 101 (the
//! router here; nginx, HAProxy and Envoy as load balancers in
//! `load_balancers.rs`), a hop that drops them makes the inner handshake time
//! out with advice, and `probe` tells the two apart.

mod support;

use std::process::Stdio;
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::{Client, ClientError, Options, Path, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::stubs;
use support::{backend, config, echo, Backend, InProcessRouter, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRAMINGS: [Framing; 4] = [
    Framing::Alpn,
    Framing::AlpnPing,
    Framing::WebSocket(Subprotocol::Alpn),
    Framing::WebSocket(Subprotocol::AlpnPing),
];

struct Setup {
    pki: Pki,
    router: InProcessRouter,
    /// In front of the router's upgrade port: drops bytes sent before the 101.
    hop: stubs::Stub,
    _echo: Backend,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let router = InProcessRouter::start(pki.dir.path(), &config(&routes));
    let hop = stubs::forgetful_hop(router.upgrade);
    Setup {
        pki,
        router,
        hop,
        _echo: echo_backend,
    }
}

impl Setup {
    fn client(&self, server: std::net::SocketAddr, framing: Framing, early_hello: bool) -> Client {
        let options = Options {
            sni: Some("router.test".into()),
            ca: Some(vec![self.pki.server_ca.clone()]),
            upgrade: UpgradeMode::Framing(framing),
            early_hello,
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                tls: Duration::from_secs(2),
                upgrade: Duration::from_secs(5),
            },
            ..Options::default()
        };
        let url = ServerUrl::parse(&format!("http://{server}")).unwrap();
        Client::new(url, "echo", options).unwrap()
    }

    fn probe(&self, server: std::net::SocketAddr, early_hello: bool) -> (bool, String) {
        let mut c = integration_tests::tunnel_command();
        c.args([
            "probe",
            "--server",
            &format!("http://{server}"),
            "--alpn",
            "echo",
        ])
        .args(["--sni", "router.test", "--timeout", "5s", "--ca"])
        .arg(self.pki.path("router-ca.pem"))
        .env_remove("ALPN_TUNNEL_UPGRADE")
        .env_remove("ALPN_TUNNEL_EARLY_HELLO");
        if early_hello {
            c.arg("--early-hello");
        }
        let out = c.stdin(Stdio::null()).output().expect("run alpn-tunnel");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_opens_with_the_client_hello_behind_the_request() {
    let s = setup();
    for framing in FRAMINGS {
        let (mut stream, path) = s
            .client(s.router.upgrade, framing, true)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", framing.name()));
        assert!(matches!(path, Path::Upgrade(_)), "{path}");
        // More than a frame's worth each way, through the framing.
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        stream.write_all(&sent).await.unwrap();
        let mut back = vec![0u8; sent.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert!(back == sent, "{}: the bytes differ", framing.name());
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{}: a clean end", framing.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_that_drops_early_bytes_times_the_handshake_out_with_advice() {
    let s = setup();
    for framing in FRAMINGS {
        // Waiting for the 101 works through the hop...
        let (mut stream, _) = s
            .client(s.hop.addr, framing, false)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{} without the early hello: {e}", framing.name()));
        stream.write_all(b"waited").await.unwrap();
        let mut back = [0u8; 6];
        stream.read_exact(&mut back).await.unwrap();
        // ...sending the ClientHello before it does not, and says why.
        let err = match s.client(s.hop.addr, framing, true).connect().await {
            Ok(_) => panic!(
                "{}: the hop drops the ClientHello, yet a tunnel opened",
                framing.name()
            ),
            Err(e) => e,
        };
        assert!(
            matches!(err, ClientError::Timeout { .. }),
            "{}: {err}",
            framing.name()
        );
        let text = err.to_string();
        assert!(
            text.contains("ClientHello sent before the upgrade answer")
                && text.contains("alpn-tunnel probe")
                && text.contains("did not finish within 2s"),
            "{text}"
        );
    }
    assert_eq!(s.hop.heads().len(), 8, "every upgrade went through the hop");
}

#[test]
fn probe_says_whether_the_path_carries_the_client_hello() {
    let s = setup();
    let step = "inner ClientHello behind the upgrade request";
    let (ok, out) = s.probe(s.router.upgrade, false);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(step))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("ok") && line.contains("carried: every hop passes bytes sent before the 101"),
        "{out}"
    );

    let (ok, out) = s.probe(s.hop.addr, false);
    assert!(ok, "tunnels work through the hop without it:\n{out}");
    let line = out
        .lines()
        .find(|l| l.contains(step))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("not carried") && line.contains("leave --early-hello off"),
        "{out}"
    );
    assert!(out.contains("result: tunnels work"), "{out}");

    // Set, it is what the tunnel does, and what fails.
    let (ok, out) = s.probe(s.hop.addr, true);
    assert!(!ok, "{out}");
    assert!(
        out.lines().any(|l| l.contains("FAIL")
            && l.contains("inner TLS via upgrade websocket, ClientHello behind the request")
            && l.contains("alpn-tunnel probe")),
        "{out}"
    );
    assert!(!out.contains(step), "no second try when it is set:\n{out}");
}

/// A refused upgrade is reported as the refusal, although the ClientHello
/// behind it reaches the server as if it were a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_reported_as_such() {
    let s = setup();
    let options = Options {
        sni: Some("router.test".into()),
        ca: Some(vec![s.pki.server_ca.clone()]),
        upgrade: UpgradeMode::Framing(Framing::AlpnPing),
        early_hello: true,
        ..Options::default()
    };
    let url = ServerUrl::parse(&format!("http://{}/elsewhere", s.router.upgrade)).unwrap();
    let err = match Client::new(url, "echo", options).unwrap().connect().await {
        Ok(_) => panic!("an upgrade on the wrong path opened a tunnel"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::Upgrade { .. }) && text.contains("404"),
        "{text}"
    );
}
