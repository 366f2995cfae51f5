//! `alpn-bench`: runs the benchmarks and writes `bench/results/latest.json`,
//! `bench/plots/*.svg` and `BENCHMARKS.md`; with a baseline router, only
//! `bench/results/compare-<rev>.json` and `.md`.

use std::path::PathBuf;

use alpn_bench::{backend, compare, report, run, Baseline, Group, Settings};
use clap::{Parser, Subcommand};

/// The benchmarks against nginx stream, HAProxy and Envoy, side by side in one
/// run (`make bench` builds in release mode and runs this).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A tiny iteration of each scenario, written to a temporary directory (the
    /// smoke test): checks that everything runs, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Run only this group of scenarios (repeatable); the report goes to
    /// standard output and the committed results stay as they are.
    #[arg(long, value_enum)]
    only: Vec<Group>,
    /// The router to measure.
    #[arg(long, env = "ALPN_ROUTER_BIN", default_value_os_t = sibling("alpn-router"))]
    router: PathBuf,
    /// Another revision's router, measured next to `--router` in the scenarios
    /// where the router is the subject; the comparison goes to
    /// `bench/results/compare-<rev>.json` and `.md`.
    #[arg(long, requires = "baseline_rev")]
    baseline_router: Option<PathBuf>,
    /// The revision the baseline router was built from.
    #[arg(long, requires = "baseline_router")]
    baseline_rev: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the benchmark backend (echo, download, upload and HTTP ports) until killed;
    /// the bench starts it as a process of its own.
    Backend,
}

/// A binary next to this one.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .map(|p| p.with_file_name(name))
        .unwrap_or_else(|_| name.into())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Backend) = args.command {
        return Ok(tokio::runtime::Runtime::new()?.block_on(backend::serve())?);
    }
    let settings = Settings {
        quick: args.quick,
        router_bin: args.router,
        bench_bin: std::env::current_exe()?,
        only: args.only.clone(),
        baseline: args
            .baseline_router
            .zip(args.baseline_rev)
            .map(|(router_bin, rev)| Baseline { rev, router_bin }),
    };
    // On a worker, as servers and `alpn-tunnel` run their connections: a future
    // awaited by `block_on` itself runs on this thread, and every wake-up of its
    // sockets would cross threads (a direct download ran at 13 MiB/s that way).
    let task = {
        let settings = settings.clone();
        async move { run(&settings).await }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let scenarios = runtime.block_on(runtime.spawn(task))??;
    let environment = report::environment(&settings.router_bin);
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let root = integration_tests::root();
    let scratch = tempfile::tempdir()?;
    if let Some(baseline) = &settings.baseline {
        let pairs = compare::pairs(&scenarios, baseline);
        let comparison = compare::Comparison {
            date: &date,
            environment: &environment,
            baseline_rev: &baseline.rev,
            pairs: &pairs,
            scenarios: &scenarios,
        };
        let dir = if args.quick {
            scratch.path().to_path_buf()
        } else {
            root.join("bench/results")
        };
        print!("{}", compare::write(&comparison, &dir)?);
        return Ok(());
    }
    let discussion = std::fs::read_to_string(root.join("bench/discussion.md"))?;
    let report = report::Report {
        date: &date,
        environment: &environment,
        scenarios: &scenarios,
        discussion: &discussion,
    };
    let (results, plots, markdown) = if args.quick || !args.only.is_empty() {
        let dir = scratch.path();
        (
            dir.to_path_buf(),
            dir.join("plots"),
            dir.join("BENCHMARKS.md"),
        )
    } else {
        (
            root.join("bench/results"),
            root.join("bench/plots"),
            root.join("BENCHMARKS.md"),
        )
    };
    report::write(&report, &results, &plots, &markdown, "bench/plots")?;
    print!("{}", std::fs::read_to_string(&markdown)?);
    Ok(())
}
