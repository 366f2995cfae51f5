//! A tunnel the server cuts (its inner TLS ends without `close_notify`, as the
//! router ends it when the backend failed or reset: issue 10 item 5) is
//! reported as cut: `alpn-tunnel connect` exits non-zero saying so, and
//! `forward` resets the local connection instead of closing it cleanly.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;

use rustls::{ServerConnection, StreamOwned};
use support::{router_server_config, Logged, Pki, DEADLINE};

/// What the fake server sends before it cuts the tunnel.
const PARTIAL: &[u8] = b"the first part of an answer";

/// A direct-TLS server as `router.test` for ALPN `echo` that, on each
/// connection, completes the handshake, sends `PARTIAL` and closes the TCP
/// connection without TLS `close_notify`.
fn cutting_server(pki: &Pki) -> SocketAddr {
    let config = Arc::new(router_server_config(pki, "echo"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                tcp.set_read_timeout(Some(DEADLINE)).unwrap();
                let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
                if tls.write_all(PARTIAL).and_then(|_| tls.flush()).is_err() {
                    return;
                }
                // No send_close_notify: the TCP connection just ends.
                let StreamOwned { sock, .. } = tls;
                drop(sock);
            });
        }
    });
    addr
}

/// `alpn-tunnel SUBCOMMAND` straight to `server` (no detection), trusting the PKI.
fn cli(pki: &Pki, sub: &str, server: SocketAddr, alpn: &str) -> Command {
    let mut c = integration_tests::tunnel_command();
    c.args([
        sub,
        "--server",
        &format!("https://{server}"),
        "--alpn",
        alpn,
    ])
    .args([
        "--sni",
        "router.test",
        "--upgrade",
        "never",
        "--timeout",
        "5s",
    ])
    .arg("--ca")
    .arg(pki.path("router-ca.pem"))
    .env_remove("ALPN_TUNNEL_UPGRADE");
    c
}

#[test]
fn connect_exits_non_zero_when_the_tunnel_is_cut() {
    let pki = Pki::new();
    let server = cutting_server(&pki);
    let mut child = cli(&pki, "connect", server, "echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdin stays open: the cut, not our EOF, ends the tunnel.
    let stdin = child.stdin.take();
    let (done, wait) = std::sync::mpsc::channel();
    thread::spawn(move || done.send(child.wait_with_output()));
    let out = wait
        .recv_timeout(DEADLINE)
        .expect("alpn-tunnel connect exits once the tunnel is cut")
        .unwrap();
    drop(stdin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.stdout, PARTIAL, "what arrived is passed on");
    assert!(!out.status.success(), "a cut tunnel is a failure:\n{err}");
    assert!(
        err.contains(
            "the tunnel was cut (truncated): the server ended it without TLS close_notify"
        ),
        "{err}"
    );
}

#[test]
fn forward_resets_the_local_connection_when_the_tunnel_is_cut() {
    let pki = Pki::new();
    let server = cutting_server(&pki);
    let mut forward = Logged::spawn(&mut cli(&pki, "forward", server, "echo=127.0.0.1:0"));
    let local = forward.address_on_line(" for echo at ", "listening on ");
    let mut app = std::net::TcpStream::connect(local).unwrap();
    app.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match app.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    match end {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!(
            "the local application must see a reset, not {other:?}, after {} bytes\n{}",
            got.len(),
            forward.log()
        ),
    }
    assert_eq!(got, PARTIAL, "what arrived before the cut is passed on");
    let line = forward.wait_for("the tunnel was cut (truncated)");
    assert!(line.contains("the local connection is reset"), "{line}");
}
