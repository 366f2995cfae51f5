//! `alpn-bench`: runs the benchmarks and writes `bench/results/latest.json`,
//! `bench/plots/*.svg` and `BENCHMARKS.md`. `--quick` runs a tiny iteration of
//! each scenario into a temporary directory (the smoke test).

use std::path::PathBuf;

use alpn_bench::{report, run, Settings};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let router_bin = std::env::var_os("ALPN_ROUTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("alpn-router")
        });
    let settings = Settings { quick, router_bin };
    let scenarios = tokio::runtime::Runtime::new()?.block_on(run(&settings))?;
    let env = report::environment(&settings.router_bin);
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let root = integration_tests::root();
    let scratch = tempfile::tempdir()?;
    let (results, plots, markdown) = if quick {
        (
            scratch.path().to_path_buf(),
            scratch.path().join("plots"),
            scratch.path().join("BENCHMARKS.md"),
        )
    } else {
        (
            root.join("bench/results"),
            root.join("bench/plots"),
            root.join("BENCHMARKS.md"),
        )
    };
    report::write(
        &results,
        &plots,
        &markdown,
        "bench/plots",
        &env,
        &scenarios,
        &date,
    )?;
    print!("{}", std::fs::read_to_string(&markdown)?);
    Ok(())
}
