//! `alpn-router`: serve a configuration, or check one without serving. It
//! parses the arguments, sets up logging and calls the library.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

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
