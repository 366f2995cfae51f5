//! `alpn-bench`: the project's benchmarks, each a ratio to its baseline measured
//! side by side in the same run on the same machine. `make bench` runs them in
//! full and regenerates `BENCHMARKS.md`; `make test` runs a tiny iteration of
//! each as a smoke test (no figure is asserted there).
//!
//! The scenarios, numbered as in the benchmark issue: 1 the router's direct data
//! path, 5 memory and 7 scaling against other TLS terminators (`direct`), 4
//! handshakes, full and resumed (`handshakes`); 2 the full chain's throughput and 3 set-up latency
//! (`chain`; on loopback, and with the client at a distance through a delaying `relay`);
//! 6 the filter's overhead, in requests/s and in Envoy's CPU per request (`filter`);
//! 8 the WebSocket upload direction (masked) against download (`upload`).
//!
//! With a [`Baseline`] (`make bench-compare`), the router of another revision
//! runs next to the current one as an extra subject, taking turns with it, in
//! the scenarios where the router is the subject (`compare` pairs them up).

pub mod backend;
pub mod chain;
pub mod compare;
pub mod direct;
pub mod filter;
pub mod handshakes;
pub mod measure;
pub mod peers;
pub mod relay;
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
    /// Run only these groups of scenarios (when empty: all, or with a
    /// baseline [`Group::COMPARED`]).
    pub only: Vec<Group>,
    /// Another revision's router, measured next to the current one.
    pub baseline: Option<Baseline>,
}

/// A router from another revision, measured as an extra subject next to the
/// current one in the same run.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The revision it was built from (a short hash), for names and files.
    pub rev: String,
    /// Its `alpn-router` binary.
    pub router_bin: PathBuf,
}

impl Baseline {
    /// The name of `subject` measured with the baseline router instead.
    pub fn subject(&self, subject: &str) -> String {
        format!("{subject} (baseline {})", self.rev)
    }
}

/// The groups of scenarios, each run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Scenario 1: the router's direct data path.
    DataPath,
    /// Scenario 4: TLS handshakes per second, full and resumed.
    Handshakes,
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

impl Group {
    /// The groups where the router is the subject: those a baseline router
    /// runs in (the filter's involves no router; scaling is left out).
    pub const COMPARED: [Group; 5] = [
        Group::DataPath,
        Group::Handshakes,
        Group::WebSocketUpload,
        Group::Chain,
        Group::Memory,
    ];
}

impl Settings {
    fn runs(&self, group: Group) -> bool {
        if self.only.is_empty() {
            self.baseline.is_none() || Group::COMPARED.contains(&group)
        } else {
            self.only.contains(&group)
        }
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

/// The order in which `n` subjects take their turns in `round`: as listed,
/// except that in odd rounds each subject in `paired` swaps places with the
/// next one (its baseline counterpart), so that neither always goes second.
pub fn turns(n: usize, round: usize, paired: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        for &i in paired {
            order.swap(i, i + 1);
        }
    }
    order
}

/// Runs every scenario (or the groups `settings.only` names), in the order of
/// the benchmark issue (the WebSocket upload beside the data path).
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Scenario>> {
    let backend = Backend::start(&settings.bench_bin);
    let mut scenarios = Vec::new();
    if settings.runs(Group::DataPath) {
        scenarios.extend(direct::data_path(settings, backend.echo).await?);
    }
    if settings.runs(Group::WebSocketUpload) {
        scenarios.push(upload::websocket_upload(settings, &backend).await?);
    }
    if settings.runs(Group::Chain) {
        eprintln!("measuring the full chain ...");
        let chains = chain::Chains::start(&backend, settings);
        scenarios.extend(chain::throughput(settings, &chains).await?);
        scenarios.extend(chain::latency(settings, &chains).await?);
        scenarios.push(chain::latency_at_a_distance(settings, &chains).await?);
    }
    if settings.runs(Group::Handshakes) {
        scenarios.extend(handshakes::handshakes(settings, backend.echo).await?);
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn paired_subjects_swap_places_every_other_round() {
        assert_eq!(super::turns(5, 0, &[1]), [0, 1, 2, 3, 4]);
        assert_eq!(super::turns(5, 1, &[1]), [0, 2, 1, 3, 4]);
        assert_eq!(super::turns(5, 2, &[1]), [0, 1, 2, 3, 4]);
        assert_eq!(super::turns(4, 1, &[0, 2]), [1, 0, 3, 2]);
        assert_eq!(super::turns(3, 1, &[]), [0, 1, 2]);
    }
}
