//! `alpn-router`: serve a configuration, or check one without serving.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alpn_router::config::Config;
use alpn_router::descriptors;
use alpn_router::server::{self, route_label, Listeners, Router};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tracing::level_filters::LevelFilter;
use tracing::{error, info, warn};
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
        Command::Check { config } => check(&config),
        Command::Serve { config } => serve(config),
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

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    server::Generation::new(config)
        .map(|g| {
            let c = &g.config;
            println!("{}: ok", path.display());
            if let Some(u) = &c.upgrade {
                let n = &u.names;
                println!(
                    "  upgrade listener {} on {} (pings every {})",
                    u.listen,
                    n.upgrade_paths.join(", "),
                    humantime::format_duration(u.ping_interval)
                );
                println!(
                    "  upgrade types {}; WebSocket subprotocols {}; headers {} and {}",
                    n.allowed_list(),
                    n.subprotocol_list(),
                    n.duplicate_upgrade_header,
                    n.client_addr_header
                );
            }
            if let Some(d) = c.direct {
                println!("  direct TLS listener {d}");
            }
            if let Some(m) = c.metrics {
                println!(
                    "  metrics listener {} (at most {} requests at once)",
                    m.listen, m.max_connections
                );
            }
            // The server raises its soft limit to the hard one at start.
            match descriptors::limit() {
                Ok(limit) => match descriptors::warning(c, limit.hard) {
                    Some(w) => println!("  warning: {w}"),
                    None => println!(
                        "  file descriptors: {} needed at the caps, {} available",
                        descriptors::needed(c),
                        limit.hard
                    ),
                },
                Err(e) => println!("  warning: cannot read the file descriptor limit: {e}"),
            }
            for r in &c.routes {
                let cert = if r.client_ca.is_some() {
                    ", client certificate required"
                } else {
                    ""
                };
                let pp = if r.proxy_protocol { ", PROXY v2" } else { "" };
                println!("  route {} -> {}{cert}{pp}", route_label(r), r.backend);
            }
        })
        .with_context(|| format!("{}: the TLS configuration cannot be built", path.display()))
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let config = Config::load(&path)?;
        match descriptors::raise() {
            Ok(limit) => {
                info!("file descriptor limit {} (hard {})", limit.soft, limit.hard);
                if let Some(w) = descriptors::warning(&config, limit.soft) {
                    warn!("{w}");
                }
            }
            Err(e) => warn!("cannot raise the file descriptor limit: {e}"),
        }
        let listeners = Listeners::bind(&config).await?;
        let router = Router::new(config).context("building the TLS configuration")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let reloader = router.clone();
        let reload_path = path.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                info!("SIGHUP: reloading {}", reload_path.display());
                match Config::load(&reload_path)
                    .map_err(anyhow::Error::from)
                    .and_then(|c| Ok(reloader.reload(c)?))
                {
                    Ok(()) => {}
                    Err(e) => error!("reload refused, keeping the old configuration: {e:#}"),
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => info!("Ctrl-C received"),
            }
        };
        server::run(router, listeners, shutdown).await;
        Ok(())
    })
}
