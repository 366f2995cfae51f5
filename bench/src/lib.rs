//! `alpn-bench`: the project's benchmarks, each a ratio to its baseline measured
//! side by side in the same run on the same machine. `make bench` runs them in
//! full and regenerates `BENCHMARKS.md`; `make test` runs a tiny iteration of
//! each as a smoke test (no figure is asserted there).
//!
//! The scenarios, numbered as in the benchmark issue: 1 the router's direct data
//! path, 4 handshakes, 5 memory and 7 scaling against other TLS terminators
//! (`direct`); 2 the full chain's throughput and 3 set-up latency (`chain`);
//! 6 the filter's overhead, in requests/s and in Envoy's CPU per request (`filter`);
//! 8 the WebSocket upload direction (masked) against download (`upload`).

pub mod backend;
pub mod chain;
pub mod direct;
pub mod filter;
pub mod measure;
pub mod peers;
pub mod report;
pub mod upload;

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::Backend;
use crate::report::Scenario;

/// How to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A tiny iteration of each scenario (the smoke test), not a measurement.
    pub quick: bool,
    /// The `alpn-router` binary to measure.
    pub router_bin: PathBuf,
    /// The `alpn-bench` binary (its `backend` subcommand is the backend).
    pub bench_bin: PathBuf,
    /// Run only this group of scenarios (all when `None`).
    pub only: Option<Group>,
}

/// The groups of scenarios, each run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Scenarios 1 and 4: the router's direct data path and handshake rate.
    DataPath,
    /// Scenarios 2 and 3: throughput and set-up latency through the full chain.
    Chain,
    /// Scenario 5: memory per idle tunnel.
    Memory,
    /// Scenario 6: the filter's overhead on ordinary requests.
    Filter,
    /// Scenario 7: scaling over the number of tunnels.
    Scaling,
    /// Scenario 8: WebSocket upload (masked) against download.
    #[value(name = "websocket-upload")]
    WebSocketUpload,
}

impl Settings {
    fn runs(&self, group: Group) -> bool {
        self.only.is_none_or(|g| g == group)
    }

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

/// Runs every scenario (or the group `settings.only` names), in the order of
/// the benchmark issue (the WebSocket upload beside the data path).
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Scenario>> {
    let backend = Backend::start(&settings.bench_bin);
    let mut data_path = Vec::new();
    if settings.runs(Group::DataPath) {
        data_path.extend(direct::data_path_and_handshakes(settings, backend.echo).await?);
    }
    let handshakes = data_path.pop();
    let mut scenarios = data_path;
    if settings.runs(Group::WebSocketUpload) {
        scenarios.push(upload::websocket_upload(settings, &backend).await?);
    }
    if settings.runs(Group::Chain) {
        eprintln!("measuring the full chain ...");
        let chain = chain::Chain::start(&backend, &settings.router_bin);
        scenarios.push(chain::throughput(settings, &chain).await?);
        scenarios.extend(chain::latency(settings, &chain).await?);
    }
    scenarios.extend(handshakes);
    if settings.runs(Group::Memory) {
        scenarios.extend(direct::memory(settings, backend.echo).await?);
    }
    if settings.runs(Group::Filter) {
        scenarios.extend(filter::overhead(settings, &backend)?);
    }
    if settings.runs(Group::Scaling) {
        scenarios.extend(direct::scaling(settings, backend.echo).await?);
    }
    Ok(scenarios)
}
