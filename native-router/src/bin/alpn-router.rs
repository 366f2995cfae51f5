//! `alpn-router`: serve a configuration, check one without serving, or drain a
//! Pod before it stops. It parses the arguments, sets up logging and calls the
//! library.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing::error;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The ALPN router: answers tunnel upgrades from Envoy (and direct TLS), runs the
/// inner TLS handshake and dispatches each stream to the backend of its ALPN.
///
/// Signals: SIGHUP reloads routes and certificates (a bad file is refused and the
/// old configuration stays); SIGTERM or Ctrl-C stop accepting and drain live
/// tunnels for up to `limits.drain_grace`, then close the rest. Logs: on stderr,
/// filtered by RUST_LOG (default info).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// How log lines are written: `text` for people, `json` (one object per
    /// line, the connection's fields under `span`) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration until SIGTERM or Ctrl-C.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration (and every certificate it names), then exit.
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Drain this Pod before it stops (the preStop hook): fail Envoy's health
    /// check (POST /healthcheck/fail), wait --lb-grace for the load balancer to
    /// take the target out, drain Envoy's listeners (POST
    /// /drain_listeners?graceful; open tunnels go on), then poll the router's
    /// /metrics until alpn_router_tunnels_active sums to 0 or --deadline
    /// (counted from the start) passes.
    ///
    /// Exit 0 when drained or at the deadline (the router's drain_grace
    /// handles tunnels left after SIGTERM). When a step cannot be done (Envoy's
    /// admin unreachable or refusing, the metrics unreadable three times in a
    /// row), it is logged, the remaining steps still run, and the exit is 1
    /// with the failed steps named. Every HTTP call has a 5 s timeout.
    Drain {
        /// Envoy's admin address.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9901")]
        envoy_admin: String,
        /// The router's metrics listener (/metrics is added to a bare
        /// host:port).
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9090")]
        metrics: String,
        /// How long the load balancer needs to see the failing health check
        /// (its interval times its unhealthy threshold).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "15s")]
        lb_grace: Duration,
        /// The most the whole command takes, from its start.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "300s")]
        deadline: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => alpn_router::check(&config)
            .map(|report| print!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Serve { config } => tokio::runtime::Runtime::new()
            .context("starting the runtime")
            .and_then(|runtime| Ok(runtime.block_on(alpn_router::serve(&config))?)),
        Command::Drain {
            envoy_admin,
            metrics,
            lb_grace,
            deadline,
        } => {
            let options = alpn_router::DrainOptions {
                envoy_admin,
                metrics,
                lb_grace,
                deadline,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")
                .and_then(|runtime| {
                    let outcome = runtime.block_on(alpn_router::drain(&options));
                    if outcome.complete() {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!(
                            "exit 1: {} step(s) of the drain failed (above)",
                            outcome.failed_steps.len()
                        ))
                    }
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through `tracing`, filtered by RUST_LOG; lines from the `log`
/// crate (the shared framing and upgrade code) are bridged into it.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}
