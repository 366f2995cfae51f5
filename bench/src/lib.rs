//! `alpn-bench`: the project's benchmarks, each a ratio to its baseline measured
//! side by side in the same run on the same machine. `make bench` runs them in
//! full and regenerates `BENCHMARKS.md`; `make test` runs a tiny iteration of
//! each as a smoke test (no figure is asserted there).
//!
//! The scenarios, numbered as in the benchmark issue: 1 the router's direct data
//! path, 4 handshakes, 5 memory and 7 scaling against other TLS terminators
//! (`direct`); 2 the full chain's throughput and 3 set-up latency (`chain`);
//! 6 the filter's overhead (`filter`).

pub mod backend;
pub mod chain;
pub mod direct;
pub mod filter;
pub mod measure;
pub mod peers;
pub mod report;

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

/// Runs every scenario, in the order of the benchmark issue.
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Scenario>> {
    let backend = Backend::start(&settings.bench_bin);
    let [data_one, data_many, handshakes] =
        direct::data_path_and_handshakes(settings, backend.echo).await?;
    eprintln!("measuring the full chain ...");
    let chain = chain::Chain::start(&backend, &settings.router_bin);
    let chain_throughput = chain::throughput(settings, &chain).await?;
    let [latency_p50, latency_p99] = chain::latency(settings, &chain).await?;
    drop(chain);
    let [memory_1k, memory_10k] = direct::memory(settings, backend.echo).await?;
    let overhead = filter::overhead(settings, &backend)?;
    let [scaling_throughput, scaling_cpu] = direct::scaling(settings, backend.echo).await?;
    Ok(vec![
        data_one,
        data_many,
        chain_throughput,
        latency_p50,
        latency_p99,
        handshakes,
        memory_1k,
        memory_10k,
        overhead,
        scaling_throughput,
        scaling_cpu,
    ])
}
