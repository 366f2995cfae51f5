//! `alpn-tunnel up`: the forwards of a configuration file, each its own
//! listener and [`accept_until_pooled`] task, kept in step with the file on reload.
//!
//! A reload re-reads the file. An invalid file (or one that no longer has a
//! forward named on the command line) is refused and everything keeps running.
//! Otherwise forwards whose settings are unchanged (their server's included,
//! certificates compared by content) keep running untouched with their
//! connections; removed and changed ones close their listeners at once, and
//! their open connections are drained: they go on for up to the file's `drain`
//! (30 s by default), and those still open then are cut (the tunnel ends with
//! `close_notify`, the local connection is reset). A changed forward then
//! starts again with its new settings; new ones start. Shutdown (the token)
//! cuts every connection at once, as `forward` does.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, info, warn};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config_file::{ConfigFile, ConfigFileError, Forward};
use crate::{accept_until_pooled, Client, ClientError};

/// Why `up` could not start (a reload logs these instead).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The file is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The selection holds no forward.
    #[error("{}: no forward to start: add a [[forward]] table", .0.display())]
    Empty(PathBuf),
    /// A forward's client could not be built (its TLS settings).
    #[error("forward {name}: {error}")]
    Client {
        /// The forward.
        name: String,
        /// Why (boxed: the error carries a whole proxy answer).
        error: Box<ClientError>,
    },
    /// A forward's listen address could not be bound.
    #[error("forward {name}: cannot listen on {addr}: {error}")]
    Listen {
        /// The forward.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// Loads `path` as `up` would and builds every forward's client: what
/// `check-config` checks.
pub fn check(path: &Path) -> Result<ConfigFile, UpError> {
    let config = ConfigFile::load(path)?;
    for f in &config.forwards {
        client(f)?;
    }
    Ok(config)
}

fn client(f: &Forward) -> Result<Client, UpError> {
    f.client().map_err(|error| UpError::Client {
        name: f.name.clone(),
        error: Box::new(error),
    })
}

/// One running forward.
struct Running {
    forward: Forward,
    /// The bound address (differs from `forward.listen` for port 0).
    addr: SocketAddr,
    /// Closes the listener (and starts the drain).
    stop: CancellationToken,
    /// Resolves once the listener is closed.
    closed: oneshot::Receiver<()>,
}

/// The set of running forwards.
pub struct Forwards {
    running: Vec<Running>,
    /// The drain of the file last applied, read by a forward when it stops.
    drain: Arc<Mutex<Duration>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// What a reload did, by forward name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Unchanged and untouched.
    pub kept: Vec<String>,
    /// Changed: stopped (drained) and started again.
    pub restarted: Vec<String>,
    /// No longer in the file (or the selection): stopped (drained).
    pub stopped: Vec<String>,
    /// New.
    pub started: Vec<String>,
    /// Could not start (logged); a later reload tries again.
    pub failed: Vec<String>,
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |names: &[String]| match names.is_empty() {
            true => "none".to_string(),
            false => names.join(", "),
        };
        write!(
            f,
            "kept {}; restarted {}; stopped {}; started {}; failed {}",
            list(&self.kept),
            list(&self.restarted),
            list(&self.stopped),
            list(&self.started),
            list(&self.failed)
        )
    }
}

/// A forward's client and bound listener.
async fn bind(f: &Forward) -> Result<(TcpListener, Client), UpError> {
    let client = client(f)?;
    let listener = TcpListener::bind(f.listen)
        .await
        .map_err(|error| UpError::Listen {
            name: f.name.clone(),
            addr: f.listen,
            error,
        })?;
    Ok((listener, client))
}

impl Forwards {
    /// Binds every forward, then starts them all; if one cannot be bound,
    /// none starts.
    pub async fn start(
        forwards: &[Forward],
        drain: Duration,
        shutdown: CancellationToken,
    ) -> Result<Forwards, UpError> {
        let mut bound = Vec::new();
        for f in forwards {
            bound.push((f, bind(f).await?));
        }
        let mut set = Forwards {
            running: Vec::new(),
            drain: Arc::new(Mutex::new(drain)),
            shutdown,
            tasks: TaskTracker::new(),
        };
        for (f, (listener, client)) in bound {
            let running = set.spawn(f.clone(), listener, client);
            set.running.push(running);
        }
        Ok(set)
    }

    /// The running forwards' names and bound addresses.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .iter()
            .map(|r| (r.forward.name.clone(), r.addr))
            .collect()
    }

    fn spawn(&self, forward: Forward, listener: TcpListener, client: Client) -> Running {
        let addr = listener.local_addr().unwrap_or(forward.listen);
        let (name, pool) = (forward.name.clone(), forward.pool);
        info!(
            "forward {name}: listening on {addr} for {} at {} (server {}){}",
            forward.alpn,
            forward.server.url,
            forward.server.name,
            match pool {
                0 => String::new(),
                n => format!(", {n} tunnel(s) pre-opened"),
            }
        );
        let stop = self.shutdown.child_token();
        let cut = self.shutdown.child_token();
        let (closed_tx, closed) = oneshot::channel();
        let drain = self.drain.clone();
        let (stopping, cutting) = (stop.clone(), cut.clone());
        self.tasks.spawn(async move {
            let (open, pooled) =
                accept_until_pooled(listener, client, pool, stopping, cutting.clone()).await;
            let _ = closed_tx.send(());
            if !cutting.is_cancelled() && !open.is_empty() {
                let drain = *drain.lock().unwrap_or_else(|p| p.into_inner());
                info!(
                    "forward {name}: listener closed; {} open connection(s) may go on for up to {}",
                    open.len(),
                    humantime::format_duration(drain)
                );
                if tokio::time::timeout(drain, open.wait()).await.is_err() {
                    warn!(
                        "forward {name}: cutting {} connection(s) still open after {}",
                        open.len(),
                        humantime::format_duration(drain)
                    );
                    cutting.cancel();
                }
            }
            open.wait().await;
            // The pool's tunnels end with the listener (`stop`).
            pooled.wait().await;
            info!("forward {name}: stopped");
        });
        Running {
            forward,
            addr,
            stop,
            closed,
        }
    }

    /// Brings the running set to `wanted`: keeps the unchanged, stops the
    /// removed and changed (their listeners close before anything new binds,
    /// so a forward may take over an address), starts the changed and new.
    pub async fn apply(&mut self, wanted: &[Forward], drain: Duration) -> Changes {
        *self.drain.lock().unwrap_or_else(|p| p.into_inner()) = drain;
        let mut changes = Changes::default();
        let mut kept = Vec::new();
        let mut stopping = Vec::new();
        for r in self.running.drain(..) {
            match wanted.iter().find(|f| f.name == r.forward.name) {
                Some(f) if *f == r.forward => kept.push(r),
                Some(_) => {
                    changes.restarted.push(r.forward.name.clone());
                    stopping.push(r);
                }
                None => {
                    changes.stopped.push(r.forward.name.clone());
                    stopping.push(r);
                }
            }
        }
        for r in &stopping {
            info!("forward {}: stopping (reload)", r.forward.name);
            r.stop.cancel();
        }
        for r in stopping {
            let _ = r.closed.await;
        }
        for f in wanted {
            if let Some(i) = kept.iter().position(|r| r.forward.name == f.name) {
                changes.kept.push(f.name.clone());
                self.running.push(kept.swap_remove(i));
                continue;
            }
            match bind(f).await {
                Ok((listener, client)) => {
                    if !changes.restarted.contains(&f.name) {
                        changes.started.push(f.name.clone());
                    }
                    let running = self.spawn(f.clone(), listener, client);
                    self.running.push(running);
                }
                Err(e) => {
                    error!("{e}; not started");
                    changes.restarted.retain(|n| n != &f.name);
                    changes.failed.push(f.name.clone());
                }
            }
        }
        changes
    }

    /// Waits for every forward to end (after the shutdown token is cancelled).
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Runs the forwards of the file at `path` named in `names` (all when
/// empty): reloads the file on each message from `reloads`, and stops
/// everything when `shutdown` is cancelled, returning once every connection
/// has ended. Fails only at start.
pub async fn up(
    path: &Path,
    names: &[String],
    mut reloads: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> Result<(), UpError> {
    let load = || -> Result<(Vec<Forward>, Duration), UpError> {
        let config = ConfigFile::load(path)?;
        let wanted = config.select(names)?;
        if wanted.is_empty() {
            return Err(UpError::Empty(path.to_path_buf()));
        }
        Ok((wanted, config.drain))
    };
    let (wanted, drain) = load()?;
    let mut forwards = Forwards::start(&wanted, drain, shutdown.clone()).await?;
    info!("up: {} forward(s) from {}", wanted.len(), path.display());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            reload = reloads.recv() => {
                if reload.is_none() {
                    shutdown.cancelled().await;
                    break;
                }
                info!("reloading {}", path.display());
                match load() {
                    Err(e) => error!("reload refused, keeping the running forwards: {e}"),
                    Ok((wanted, drain)) => {
                        let changes = forwards.apply(&wanted, drain).await;
                        info!("reloaded: {changes}");
                    }
                }
            }
        }
    }
    info!("up: stopping every forward");
    forwards.wait().await;
    Ok(())
}

/// The signals `up` obeys: SIGHUP sends a reload (several pending coalesce,
/// as the file is read once they are handled), SIGTERM and Ctrl-C cancel the
/// returned token.
pub fn signals() -> std::io::Result<(mpsc::Receiver<()>, CancellationToken)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (reload, reloads) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP received");
            let _ = reload.try_send(());
        }
    });
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("Ctrl-C received"),
        }
        stop.cancel();
    });
    Ok((reloads, shutdown))
}
