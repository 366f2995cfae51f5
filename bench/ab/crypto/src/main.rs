//! rustls with ring against rustls with aws-lc-rs on this CPU, with no
//! sockets, scheduler or peer in the way: a client and a server connection in
//! one thread, bytes handed between them in memory.
//!
//! - record layer: 256 MiB from client to server in 16 KiB writes (AES-128-GCM
//!   and AES-256-GCM, TLS 1.3), sealed by one side and opened by the other;
//! - full handshakes: TLS 1.3 with an ECDSA P-256 certificate and X25519, no
//!   resumption, both sides' work counted; then again with the client on ring
//!   whichever the server's provider, as the router meets its clients.
//!
//! The providers take turns for ROUNDS rounds (default 7); it prints each
//! round and the medians. `cargo run --release -- [ROUNDS]`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const MIB: usize = 1 << 20;
const BULK: usize = 256 * MIB;
const HANDSHAKES: usize = 2000;

struct Pki {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["bench.test".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pki {
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

fn provider(name: &str, suite: Option<&str>) -> Arc<CryptoProvider> {
    let mut p = match name {
        "ring" => rustls::crypto::ring::default_provider(),
        _ => rustls::crypto::aws_lc_rs::default_provider(),
    };
    // The same key exchange for both: X25519 (aws-lc-rs would offer a
    // post-quantum hybrid first).
    p.kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    if let Some(suite) = suite {
        p.cipher_suites
            .retain(|s| format!("{:?}", s.suite()).contains(suite));
    }
    Arc::new(p)
}

fn configs(p: &Arc<CryptoProvider>, pki: &Pki) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let mut roots = RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let mut client = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    let mut server = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    server.send_tls13_tickets = 0;
    (Arc::new(client), Arc::new(server))
}

/// Moves every pending TLS byte from one side to the other until neither has any.
fn pump(c: &mut ClientConnection, s: &mut ServerConnection, buf: &mut Vec<u8>) {
    loop {
        let mut moved = false;
        while c.wants_write() {
            buf.clear();
            c.write_tls(buf).unwrap();
            let mut rd: &[u8] = buf;
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().unwrap();
            }
            moved = true;
        }
        while s.wants_write() {
            buf.clear();
            s.write_tls(buf).unwrap();
            let mut rd: &[u8] = buf;
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn connect(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
    buf: &mut Vec<u8>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("bench.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    pump(&mut c, &mut s, buf);
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

/// MiB/s of client-to-server data, sealed and opened.
fn bulk(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> f64 {
    let mut buf = Vec::with_capacity(64 * 1024);
    let (mut c, mut s) = connect(client, server, &mut buf);
    let chunk = vec![0x5au8; 16 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let mut received = 0;
    let started = Instant::now();
    for _ in 0..BULK / chunk.len() {
        c.writer().write_all(&chunk).unwrap();
        pump(&mut c, &mut s, &mut buf);
        loop {
            match s.reader().read(&mut sink) {
                Ok(0) => break,
                Ok(n) => received += n,
                Err(_) => break, // WouldBlock: all read
            }
        }
    }
    assert_eq!(received, BULK);
    (BULK / MIB) as f64 / started.elapsed().as_secs_f64()
}

/// Full handshakes per second (both sides' work).
fn handshakes(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> f64 {
    let mut buf = Vec::with_capacity(64 * 1024);
    let started = Instant::now();
    for _ in 0..HANDSHAKES {
        let _ = connect(client, server, &mut buf);
    }
    HANDSHAKES as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(7, |r| r.parse().unwrap());
    let pki = pki();
    // The last case keeps a ring client on both sides: the router's part of
    // a handshake with a client it does not choose.
    let cases: [(&str, &str, Option<&str>, bool); 4] = [
        (
            "record layer, AES-128-GCM",
            "MiB/s",
            Some("AES_128_GCM"),
            false,
        ),
        (
            "record layer, AES-256-GCM",
            "MiB/s",
            Some("AES_256_GCM"),
            false,
        ),
        (
            "full handshakes (P-256, X25519)",
            "handshakes/s",
            None,
            false,
        ),
        (
            "full handshakes, the client on ring either way",
            "handshakes/s",
            None,
            true,
        ),
    ];
    println!("rustls {} providers, {rounds} rounds, taking turns", "0.23");
    for (title, unit, suite, ring_client) in cases {
        let mut figures = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // The order swaps every other round.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let name = ["ring", "aws-lc-rs"][i];
                let (client, server) = configs(&provider(name, suite), &pki);
                let client = if ring_client {
                    configs(&provider("ring", suite), &pki).0
                } else {
                    client
                };
                let figure = if suite.is_some() {
                    bulk(&client, &server)
                } else {
                    handshakes(&client, &server)
                };
                figures[i].push(figure);
            }
        }
        let (ring, aws) = (median(figures[0].clone()), median(figures[1].clone()));
        println!(
            "{title} ({unit}): ring {ring:.0}, aws-lc-rs {aws:.0}; aws-lc-rs / ring {:.2} (rounds: {})",
            aws / ring,
            figures[1]
                .iter()
                .zip(&figures[0])
                .map(|(a, r)| format!("{:.2}", a / r))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
