//! What the `alpn-router` commands do with a configuration file: [`serve`] it
//! as a process does (the descriptor limit raised, SIGHUP reloads the file,
//! SIGTERM or Ctrl-C drain), or [`check`] it without serving.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::descriptors;
use crate::server::{self, route_label, Generation, Listeners, Router};

/// Why a configuration file cannot be served or checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is invalid; the error names the key that is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS configurations cannot be built from the file's certificates.
    #[error("{}: the TLS configuration cannot be built: {cause}", path.display())]
    Tls {
        /// The configuration file.
        path: PathBuf,
        /// What rustls refused.
        cause: rustls::Error,
    },
    /// A listener cannot be bound; the error names the listener and its address.
    #[error(transparent)]
    Bind(io::Error),
    /// A signal handler cannot be installed.
    #[error("installing the {signal} handler: {cause}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// Why.
        cause: io::Error,
    },
}

/// The TLS error of the file at `path`.
fn tls_error(path: &Path) -> impl FnOnce(rustls::Error) -> Error + '_ {
    |cause| Error::Tls {
        path: path.to_path_buf(),
        cause,
    }
}

/// Validates the file at `path` and every certificate it names, without
/// serving; returns the report `alpn-router check` prints: the listeners, the
/// file descriptor budget and the routes.
pub fn check(path: &Path) -> Result<String, Error> {
    let generation = Generation::new(Config::load(path)?).map_err(tls_error(path))?;
    let c = &generation.config;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut line = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    line(format!("{}: ok", path.display()));
    if let Some(u) = &c.upgrade {
        let n = &u.names;
        line(format!(
            "  upgrade listener {} on {} (pings every {})",
            u.listen,
            n.upgrade_paths.join(", "),
            humantime::format_duration(u.ping_interval)
        ));
        line(format!(
            "  upgrade types {}; WebSocket subprotocols {}; headers {} and {}",
            n.allowed_list(),
            n.subprotocol_list(),
            n.duplicate_upgrade_header,
            n.client_addr_header
        ));
    }
    if let Some(d) = c.direct {
        line(format!("  direct TLS listener {d}"));
    }
    if let Some(m) = c.metrics {
        line(format!(
            "  metrics listener {} (at most {} requests at once)",
            m.listen, m.max_connections
        ));
    }
    // The server raises its soft limit to the hard one at start.
    match descriptors::limit() {
        Ok(limit) => match descriptors::warning(c, limit.hard) {
            Some(w) => line(format!("  warning: {w}")),
            None => line(format!(
                "  file descriptors: {} needed at the caps, {} available",
                descriptors::needed(c),
                limit.hard
            )),
        },
        Err(e) => line(format!(
            "  warning: cannot read the file descriptor limit: {e}"
        )),
    }
    for r in &c.routes {
        let cert = if r.client_ca.is_some() {
            ", client certificate required"
        } else {
            ""
        };
        let pp = if r.proxy_protocol { ", PROXY v2" } else { "" };
        line(format!(
            "  route {} -> {}{cert}{pp}",
            route_label(r),
            r.backend
        ));
    }
    Ok(out)
}

/// Serves the file at `path` until SIGTERM or Ctrl-C, then drains (see
/// [`run`](crate::run)); SIGHUP reloads the file, and a bad one is refused
/// with the old configuration kept. Raises the soft file descriptor limit to
/// the hard one first and warns when the connection cap still does not fit.
/// Must run inside a Tokio runtime.
pub async fn serve(path: &Path) -> Result<(), Error> {
    let config = Config::load(path)?;
    match descriptors::raise() {
        Ok(limit) => {
            info!("file descriptor limit {} (hard {})", limit.soft, limit.hard);
            if let Some(w) = descriptors::warning(&config, limit.soft) {
                warn!("{w}");
            }
        }
        Err(e) => warn!("cannot raise the file descriptor limit: {e}"),
    }
    let listeners = Listeners::bind(&config).await.map_err(Error::Bind)?;
    let router = Router::new(config).map_err(tls_error(path))?;
    let installing = |signal: &'static str| move |cause| Error::Signal { signal, cause };
    let mut hangup = signal(SignalKind::hangup()).map_err(installing("SIGHUP"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(installing("SIGTERM"))?;
    let reloader = router.clone();
    let reload_path = path.to_path_buf();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP: reloading {}", reload_path.display());
            let reloaded = Config::load(&reload_path)
                .map_err(Error::from)
                .and_then(|c| reloader.reload(c).map_err(tls_error(&reload_path)));
            if let Err(e) = reloaded {
                error!("reload refused, keeping the old configuration: {e}");
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
}
