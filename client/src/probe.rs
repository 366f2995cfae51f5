//! `alpn-tunnel probe`: every step of reaching a routed service, with what it
//! found, how long it took and, when it fails, what to do. The tool a user runs
//! first when something does not connect.

use std::fmt::Write as _;
use std::time::Instant;

use super::detect::{test_handshake, Finding};
use super::{Client, ClientError, Path, PathChoice, UpgradeMode, DEFAULT_FRAMING};
use alpn_protocol::framing::{Framing, Subprotocol};

/// One step of the probe.
#[derive(Debug)]
pub struct Step {
    /// What was tried.
    pub name: String,
    /// What came of it (or the error, with its advice).
    pub outcome: Result<String, String>,
    /// How long it took, in milliseconds.
    pub millis: f64,
}

/// What the probe found.
#[derive(Debug)]
pub struct Report {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The path a tunnel would take, if one works.
    pub path: Option<Path>,
}

impl Report {
    /// The report as text for a terminal.
    pub fn render(&self, client: &Client) -> String {
        let mut out = format!(
            "probing {} for ALPN {:?} (inner TLS name {:?})\n",
            client.server(),
            client.alpn,
            client.sni()
        );
        for (i, s) in self.steps.iter().enumerate() {
            let (mark, text) = match &s.outcome {
                Ok(t) => ("ok  ", t.as_str()),
                Err(t) => ("FAIL", t.as_str()),
            };
            let _ = writeln!(
                out,
                "{:>2}. {mark} {:<44} {:>8.1} ms  {text}",
                i + 1,
                s.name,
                s.millis
            );
        }
        match self.path {
            Some(p) => {
                let _ = writeln!(out, "result: tunnels work: {}", p.describe());
            }
            None => {
                let _ = writeln!(
                    out,
                    "result: no tunnel can be opened; see the first FAIL above"
                );
            }
        }
        out
    }

    fn step(
        &mut self,
        name: impl Into<String>,
        started: Instant,
        outcome: Result<String, String>,
    ) -> bool {
        let ok = outcome.is_ok();
        self.steps.push(Step {
            name: name.into(),
            outcome,
            millis: started.elapsed().as_secs_f64() * 1000.0,
        });
        ok
    }
}

fn peer_subject<S>(tls: &tokio_rustls::client::TlsStream<S>) -> String {
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c.subject().to_string())
        })
        .unwrap_or_else(|| "no certificate".into())
}

fn tls_summary<S>(tls: &tokio_rustls::client::TlsStream<S>) -> String {
    let (_, conn) = tls.get_ref();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "none".into());
    format!(
        "{}, ALPN {alpn}, certificate {}",
        conn.protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        peer_subject(tls)
    )
}

/// Runs every step against `client`'s server.
pub async fn probe(client: &Client) -> Report {
    let mut report = Report {
        steps: Vec::new(),
        path: None,
    };
    if !connect_steps(&mut report, client).await {
        return report;
    }

    cache_step(&mut report, client);
    // The same choice a tunnel makes: detection only where a tunnel would
    // detect, and then always afresh, whatever is cached.
    let choice = client.path_choice();
    let path = match choice {
        PathChoice::Fixed(path, why) => {
            report.step(
                "path",
                Instant::now(),
                Ok(format!("{why}: {path}, no detection")),
            );
            path
        }
        PathChoice::Detect => match detect_step(&mut report, client).await {
            Some(path) => path,
            None => return report,
        },
    };

    if let Path::Upgrade(preferred) = path {
        if client.server().tls {
            let started = Instant::now();
            let outer = async { client.outer_tls(client.tcp().await?).await };
            match outer.await {
                Ok(tls) => report.step(
                    "outer TLS to the load balancer",
                    started,
                    Ok(tls_summary(&tls)),
                ),
                Err(e) => return fail(report, "outer TLS to the load balancer", started, e),
            };
        }
        // Which framings the server accepts: in auto mode all of them, for
        // advice; a framing that was set (or `always`) is the only one tried.
        let candidates = match client.options.upgrade {
            UpgradeMode::Auto | UpgradeMode::Always => vec![
                Framing::WebSocket(Subprotocol::Alpn),
                Framing::AlpnPing,
                Framing::Alpn,
                Framing::WebSocket(Subprotocol::AlpnPing),
            ],
            _ => vec![preferred],
        };
        let mut accepted = Vec::new();
        for framing in candidates {
            let started = Instant::now();
            let outcome = match try_upgrade(client, framing).await {
                Ok(in_use) => {
                    accepted.push((framing, in_use));
                    Ok(format!("101 Switching Protocols: {}", in_use.name()))
                }
                Err(e) => Err(e.to_string()),
            };
            report.step(
                format!("upgrade {} on {}", framing.name(), client.server().path),
                started,
                outcome,
            );
        }
        let Some(&(asked, _)) = accepted
            .iter()
            .find(|(asked, _)| *asked == preferred)
            .or(accepted.first())
        else {
            return report;
        };
        let mut report = inner(report, client, Path::Upgrade(asked)).await;
        if let Some(Path::Upgrade(in_use)) = report.path {
            if !client.options.early_hello {
                early_hello_step(&mut report, client, in_use).await;
            }
        }
        if report.path.is_some() {
            store_step(
                &mut report,
                client,
                Path::Upgrade(asked),
                &accepted,
                preferred,
            );
        }
        return report;
    }
    let mut report = inner(report, client, path).await;
    if report.path.is_some() {
        store_step(&mut report, client, path, &[], DEFAULT_FRAMING);
    }
    report
}

/// What the cache holds for the server, before the probe detects afresh.
fn cache_step(report: &mut Report, client: &Client) {
    let started = Instant::now();
    let text = match &client.options.cache {
        None => "off (--cache-ttl 0, or no cache directory)".to_string(),
        Some(cache) => match client.cached() {
            Some(entry) => format!(
                "{} in {}; the probe detects afresh anyway",
                entry.describe(),
                cache.dir().display()
            ),
            None => format!("nothing cached in {}", cache.dir().display()),
        },
    };
    report.step("cache", started, Ok(text));
}

/// Stores what the probe found where a tunnel would remember it.
fn store_step(
    report: &mut Report,
    client: &Client,
    path: Path,
    accepted: &[(Framing, Framing)],
    preferred: Framing,
) {
    // As a tunnel: `auto` and `always` remember, `never` and a framing set do not.
    let remembers = matches!(
        client.options.upgrade,
        UpgradeMode::Auto | UpgradeMode::Always
    );
    let Some(cache) = client.options.cache.as_ref().filter(|_| remembers) else {
        return;
    };
    let why = match path {
        Path::Upgrade(f) if f != preferred => format!(
            "the probe: {} was refused, {} accepted",
            preferred.name(),
            accepted
                .iter()
                .map(|(a, _)| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "the probe opened a tunnel this way".to_string(),
    };
    let started = Instant::now();
    client.remember(path, &why);
    report.step(
        "cache",
        started,
        Ok(format!("stored {path} in {}", cache.dir().display())),
    );
}

/// The first steps: TCP to the server, or to the proxy and then its `CONNECT`
/// (the proxy as a step of its own, naming where it was set). Whether they worked.
async fn connect_steps(report: &mut Report, client: &Client) -> bool {
    let server = client.server().authority();
    let started = Instant::now();
    let Some(proxy) = client.proxy() else {
        let outcome = client.tcp().await.map(|_| "connected".to_string());
        return report.step(
            format!("TCP connect {server}"),
            started,
            outcome.map_err(|e| e.to_string()),
        );
    };
    let name = format!("TCP connect to the proxy {}", proxy.url.authority());
    let mut tcp = match client.proxy_tcp(proxy).await {
        Ok(tcp) => {
            report.step(name, started, Ok(format!("connected: {proxy}")));
            tcp
        }
        Err(e) => return report.step(name, started, Err(e.to_string())),
    };
    let started = Instant::now();
    let outcome = client
        .proxy_connect(&mut tcp, proxy)
        .await
        .map(|status| format!("{status}: the proxy opened a tunnel to {server}"));
    report.step(
        format!("proxy CONNECT {server}"),
        started,
        outcome.map_err(|e| e.to_string()),
    )
}

/// The detection handshake as a step; the path it points to, or `None` after
/// a failure (recorded in the report).
async fn detect_step(report: &mut Report, client: &Client) -> Option<Path> {
    let name = format!("TLS offering only {:?}", client.alpn);
    let started = Instant::now();
    let (outcome, path) = match test_handshake(client).await {
        Ok(Finding::Negotiated) => (
            Ok(format!(
                "negotiated {:?}: no load balancer in the way",
                client.alpn
            )),
            Some(Path::Direct),
        ),
        Ok(Finding::OtherAlpn(alpn)) => {
            let what = alpn.map_or_else(|| "no ALPN".to_string(), |a| format!("ALPN {a:?}"));
            (
                Ok(format!(
                    "{what}: an L7 load balancer terminates TLS; an upgrade is needed"
                )),
                Some(Path::Upgrade(DEFAULT_FRAMING)),
            )
        }
        Ok(Finding::LoadBalancerFailure(why)) => (
            Ok(format!(
                "{why}: an L7 load balancer is in the way; an upgrade is needed"
            )),
            Some(Path::Upgrade(DEFAULT_FRAMING)),
        ),
        Err(e) => (Err(e.to_string()), None),
    };
    report.step(name, started, outcome);
    path
}

/// Upgrades with `framing`; returns the framing the server switched to.
async fn try_upgrade(client: &Client, framing: Framing) -> Result<Framing, ClientError> {
    client.upgraded(framing).await.map(|f| f.framing())
}

/// The inner TLS along `path` as a tunnel would open it (the same pipeline);
/// the step names the path in use (for an upgrade, the framing the server
/// switched to).
async fn inner(mut report: Report, client: &Client, path: Path) -> Report {
    let started = Instant::now();
    let early = match path {
        Path::Upgrade(_) if client.options.early_hello => ", ClientHello behind the request",
        _ => "",
    };
    match client.pipeline(path).await {
        Ok((tls, in_use)) => {
            report.step(
                format!("inner TLS via {in_use}{early}"),
                started,
                Ok(tls_summary(&tls)),
            );
            report.path = Some(in_use);
        }
        Err(e) => {
            report.step(
                format!("inner TLS via {path}{early}"),
                started,
                Err(e.to_string()),
            );
        }
    }
    report
}

/// Whether the path carries the inner ClientHello sent right behind the
/// upgrade request (`--early-hello`), tried with the framing that worked. A
/// hop that drops those bytes leaves the handshake waiting, so the wait is
/// bounded by four times what the step above took to open a whole tunnel
/// the usual way (at least a second, at most the TLS deadline). Not carried is a finding, not a
/// failure: tunnels work without it.
async fn early_hello_step(report: &mut Report, client: &Client, framing: Framing) {
    let usual = report.steps.last().map_or(0.0, |s| s.millis);
    let bound = std::time::Duration::from_secs_f64((usual * 4.0 / 1000.0).max(1.0))
        .min(client.options.timeouts.tls);
    let started = Instant::now();
    let outcome = match tokio::time::timeout(bound, client.early_hello(framing)).await {
        Ok(Ok(_)) => "carried: every hop passes bytes sent before the 101, so --early-hello opens a tunnel a round trip sooner (this step's time against the one above)".to_string(),
        Ok(Err(e)) => format!("not carried ({e}): leave --early-hello off"),
        Err(_) => format!(
            "not carried: no answer to the ClientHello within {} (a hop holds back or drops bytes sent before the 101): leave --early-hello off",
            humantime::format_duration(bound)
        ),
    };
    report.step(
        "inner ClientHello behind the upgrade request",
        started,
        Ok(outcome),
    );
}

fn fail(mut report: Report, name: &str, started: Instant, e: ClientError) -> Report {
    report.step(name, started, Err(e.to_string()));
    report
}
