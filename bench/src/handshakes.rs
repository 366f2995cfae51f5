//! Scenario 4: TLS 1.3 handshakes per second, full and resumed (session
//! tickets), the router's direct port against the other TLS terminators in
//! front of the same echo backend.

use std::net::SocketAddr;

use crate::measure::{self, Handshake};
use crate::peers::{self, Peer};
use crate::report::{Row, Scenario, Target, BEST_PEER};
use crate::Settings;

/// Full handshakes, then resumed ones; every subject runs at once and they
/// take turns, kind after kind, in each of two rounds.
pub async fn handshakes(settings: &Settings, backend: SocketAddr) -> anyhow::Result<[Scenario; 2]> {
    let terminators = [Peer::Router, Peer::NginxStream, Peer::Haproxy, Peer::Envoy];
    let (subjects, paired) = peers::subjects(&terminators, settings);
    let running: Vec<_> = subjects.iter().map(|s| peers::start(s, backend)).collect();
    let n = running.len();
    let (mut full, mut resumed) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let (secs, clients) = (settings.time(5, 150), settings.size(16, 2));
    for round in 0..2 {
        eprintln!("measuring handshakes, round {} ...", round + 1);
        for i in crate::turns(n, round, &paired) {
            let target = &running[i].target;
            full[i].push(measure::handshake_rate(target, Handshake::Full, secs, clients).await?);
            resumed[i]
                .push(measure::handshake_rate(target, Handshake::Resumed, secs, clients).await?);
        }
    }
    // The rate over both rounds: the mean of the two, as they last as long.
    let rows = |rates: &[Vec<f64>]| -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                rounds: rates[i].clone(),
                ..Row::new(
                    &running[i].name,
                    rates[i].iter().sum::<f64>() / rates[i].len() as f64,
                )
            })
            .collect()
    };
    let common = "16 clients, each with its own TLS client configuration, connect, complete a TLS 1.3 handshake \
                  (ECDSA P-256 certificate; rustls offers X25519 first), echo one byte through to the backend and \
                  close, for 5 s in each of two rounds (10 s in all); the subjects run at once and take turns, full \
                  then resumed. The peers as they ship: each issues TLS 1.3 session tickets (nginx and HAProxy with \
                  OpenSSL, Envoy with BoringSSL, the router with rustls's stateless ticketer).";
    Ok([
        Scenario {
            id: "handshakes",
            title: "Full TLS 1.3 handshakes per second",
            unit: "handshakes/s",
            higher_is_better: true,
            baseline: BEST_PEER,
            target: Some(Target::new(
                &[Peer::Router.name()],
                1.1,
                "at least 1.1x the best peer",
            )),
            method: format!("{common} Full: the clients keep no session (resumption off)."),
            rows: rows(&full),
        },
        Scenario {
            id: "handshakes-resumed",
            title: "Resumed TLS 1.3 handshakes per second (session tickets)",
            unit: "handshakes/s",
            higher_is_better: true,
            baseline: BEST_PEER,
            target: None,
            method: format!(
                "{common} Resumed: each client made one full handshake first (not counted) and then resumes \
                 with the ticket its previous connection was given (PSK with ECDHE, no 0-RTT); a handshake the \
                 server did not resume stops the run with an error."
            ),
            rows: rows(&resumed),
        },
    ])
}
