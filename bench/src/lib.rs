//! `alpn-bench`: the project's benchmarks, each a ratio to its baseline measured
//! side by side in the same run on the same machine. `make bench` runs them in
//! full and regenerates `BENCHMARKS.md`; `make test` runs a tiny iteration of
//! each as a smoke test (no figure is asserted there).
//!
//! Measured so far: the router's direct data path against nginx `stream`,
//! HAProxy and Envoy (one tunnel and 64 in parallel), the full-handshake rate,
//! and the filter's overhead on ordinary requests.

pub mod measure;
pub mod peers;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::stubs;

use crate::peers::Peer;
use crate::report::{Row, Scenario};

/// How to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A tiny iteration of each scenario (the smoke test), not a measurement.
    pub quick: bool,
    /// The `alpn-router` binary to measure.
    pub router_bin: PathBuf,
}

impl Settings {
    fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    fn time(&self, full: u64, quick_ms: u64) -> Duration {
        if self.quick {
            Duration::from_millis(quick_ms)
        } else {
            Duration::from_secs(full)
        }
    }
}

/// Runs every scenario.
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Scenario>> {
    let backend = stubs::echo();
    let mut data_one = Vec::new();
    let mut data_many = Vec::new();
    let mut handshakes = Vec::new();
    let mut memory = Vec::new();
    for peer in Peer::ALL {
        let running = peers::start(peer, backend.addr, &settings.router_bin);
        eprintln!("measuring {} ...", peer.name());
        // Bulk figures are the median of three runs (one in the smoke test).
        let mut one = Vec::new();
        let mut many = Vec::new();
        for _ in 0..settings.size(3, 1) {
            one.push(
                measure::throughput(&running.target, settings.size(512 << 20, 2 << 20), 1).await?,
            );
            many.push(
                measure::throughput(&running.target, settings.size(8 << 20, 64 << 10), 64).await?,
            );
        }
        data_one.push(Row::new(peer.name(), median(one)));
        data_many.push(Row::new(peer.name(), median(many)));
        if let (Peer::Router | Peer::NginxStream, Some(pid)) = (peer, running.pid()) {
            let per_tunnel =
                measure::idle_memory(&running.target, pid, settings.size(1000, 16)).await?;
            memory.push(Row::new(peer.name(), per_tunnel));
        }
        if peer != Peer::RawTcp {
            let rate = measure::handshake_rate(
                &running.target,
                settings.time(10, 300),
                settings.size(16, 2),
            )
            .await?;
            handshakes.push(Row::new(peer.name(), rate));
        }
    }
    let overhead = filter_overhead(settings)?;
    Ok(vec![
        Scenario {
            id: "data-path-1",
            title: "Router data path, direct TLS, one tunnel",
            unit: "MiB/s each way",
            higher_is_better: true,
            baseline: Peer::NginxStream.name(),
            target: Some(("alpn-router", 1.0, "at least as fast as nginx stream")),
            method: "One TLS 1.3 connection (ECDSA P-256) to each terminator, which proxies to the same echo backend; \
                     512 MiB sent while the echo is read back at the same time, from one client task; the median of three runs.".into(),
            absolute_limit: None,
            rows: data_one,
        },
        Scenario {
            id: "data-path-64",
            title: "Router data path, direct TLS, 64 tunnels in parallel",
            unit: "MiB/s each way, all tunnels",
            higher_is_better: true,
            baseline: Peer::NginxStream.name(),
            target: Some(("alpn-router", 1.0, "at least as fast as nginx stream")),
            method: "64 TLS connections at once, 8 MiB each way each; the median of three runs.".into(),
            absolute_limit: None,
            rows: data_many,
        },
        Scenario {
            id: "handshakes",
            title: "Full TLS 1.3 handshakes per second",
            unit: "handshakes/s",
            higher_is_better: true,
            baseline: Peer::NginxStream.name(),
            target: Some(("alpn-router", 0.8, "at least 80% of nginx stream")),
            method: "16 clients connect, complete a full TLS 1.3 handshake (ECDSA P-256, resumption off), \
                     echo one byte through to the backend and close, for 10 s.".into(),
            absolute_limit: None,
            rows: handshakes,
        },
        Scenario {
            id: "memory-1k",
            title: "Memory per idle tunnel, 1,000 tunnels",
            unit: "KiB per tunnel",
            higher_is_better: false,
            baseline: Peer::NginxStream.name(),
            target: Some(("alpn-router", 1.0, "below nginx stream, and at most 32 KiB")),
            absolute_limit: Some(32.0),
            method: "1,000 TLS tunnels opened and held idle (handshake done, one byte echoed through the backend), \
                     after 8 warm-up tunnels; the growth of the server's resident memory (all its processes) divided by 1,000. \
                     10,000 tunnels do not fit this machine's hard limit of 20,000 file descriptors per process \
                     (the bench process holds both the clients and the echo backend)."
                .into(),
            rows: memory,
        },
        overhead,
    ])
}

/// The middle value (the upper middle of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Envoy's requests per second on ordinary requests, with the filter and without.
fn filter_overhead(settings: &Settings) -> anyhow::Result<Scenario> {
    let web = stubs::web();
    let with = Bootstrap::shipped("behind-l7.yaml")
        .port(8080, 0)
        .port(8081, web.addr.port());
    let text = with.text();
    let (start, end) = (
        text.find("# BEGIN fragment.yaml http_filters").unwrap(),
        text.find("# END fragment.yaml http_filters").unwrap(),
    );
    let without = Bootstrap::from_text(
        "behind-l7.yaml",
        format!("{}{}", &text[..start], &text[end..]),
    );
    let mut rows = Vec::new();
    let mut latencies = Vec::new();
    for (name, bootstrap) in [
        ("Envoy without the filter", without),
        ("Envoy with the filter", with),
    ] {
        let envoy = Envoy::start(&bootstrap);
        let url = format!("http://{}/index.html", envoy.listener("web"));
        eprintln!("measuring {name} ...");
        let (rps, p99) = measure::wrk(&url, settings.time(10, 1000), settings.size(32, 4))?;
        rows.push(Row::new(name, rps));
        latencies.push(format!("{name}: p99 {p99:.2} ms"));
    }
    Ok(Scenario {
        id: "filter-overhead",
        title: "Filter overhead on ordinary (non-upgrade) requests",
        unit: "requests/s",
        higher_is_better: true,
        baseline: "Envoy without the filter",
        target: Some(("Envoy with the filter", 0.95, "less than 5% fewer requests/s")),
        absolute_limit: None,
        method: format!(
            "wrk -t2 -c32 -d10s against envoy/behind-l7.yaml in front of a small HTTP backend, with the filter's \
             http_filters entry and without it. 99th percentiles: {}.",
            latencies.join("; ")
        ),
        rows,
    })
}
