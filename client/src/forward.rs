//! `alpn-tunnel forward` as a library: [`forward`] serves a bound local
//! listener for one [`Client`], carrying each accepted connection as its own
//! tunnel, until it is told to stop; [`forward_pooled`] takes each tunnel's
//! outer connection from a [`Pool`] of pre-opened ones where it can.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pool::{Pool, Source};
use crate::{explain, Client, ClientError, Path};
use alpn_protocol::framing::Io;

/// How long a stopping tunnel gets to send its TLS `close_notify`.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Accepts connections on `listener` and carries each through a tunnel opened
/// by `client`. When `shutdown` is cancelled it stops accepting, every
/// connection ends its tunnel, and it returns once no connection task is left.
pub async fn forward(listener: TcpListener, client: Client, shutdown: CancellationToken) {
    accept_until(listener, client, shutdown.clone(), shutdown)
        .await
        .wait()
        .await;
}

/// [`forward`] with `pool` tunnels kept pre-opened (upgraded, pinged, inner
/// TLS not started): a local connection takes one and needs only the inner
/// TLS handshake, or opens a tunnel as usual when none is ready. Zero: no pool.
pub async fn forward_pooled(
    listener: TcpListener,
    client: Client,
    pool: usize,
    shutdown: CancellationToken,
) {
    let client = Arc::new(client);
    let tasks = TaskTracker::new();
    let pool = (pool > 0).then(|| Pool::start(client.clone(), pool, &tasks, shutdown.clone()));
    accept_with(listener, client, pool, shutdown.clone(), shutdown)
        .await
        .wait()
        .await;
    tasks.close();
    tasks.wait().await;
}

/// [`forward`] with the two ends apart, for a reload that closes a listener
/// but lets its connections drain: accepts until `stop`, then closes the
/// listener and returns the (closed) tracker of the connections still open,
/// each of which ends its tunnel when `cut` is cancelled.
pub async fn accept_until(
    listener: TcpListener,
    client: Client,
    stop: CancellationToken,
    cut: CancellationToken,
) -> TaskTracker {
    accept_with(listener, Arc::new(client), None, stop, cut).await
}

/// [`accept_until`] with `pool` tunnels kept pre-opened (as
/// [`forward_pooled`]) until `stop` (zero: no pool). Returns the open
/// connections' tracker and the pool's: its tunnels end with `stop`.
pub async fn accept_until_pooled(
    listener: TcpListener,
    client: Client,
    pool: usize,
    stop: CancellationToken,
    cut: CancellationToken,
) -> (TaskTracker, TaskTracker) {
    let client = Arc::new(client);
    let pool_tasks = TaskTracker::new();
    let pool = (pool > 0).then(|| Pool::start(client.clone(), pool, &pool_tasks, stop.clone()));
    let open = accept_with(listener, client, pool, stop, cut).await;
    pool_tasks.close();
    (open, pool_tasks)
}

/// The accept loop of [`accept_until`], taking tunnels from `pool` if given.
async fn accept_with(
    listener: TcpListener,
    client: Arc<Client>,
    pool: Option<Arc<Pool>>,
    stop: CancellationToken,
    cut: CancellationToken,
) -> TaskTracker {
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (local, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("{}: accept failed: {e}", client.alpn);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        tasks.spawn(carry(
            local,
            peer,
            client.clone(),
            pool.clone(),
            cut.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    tasks
}

/// One local connection through one tunnel, logged when it ends.
async fn carry(
    mut local: TcpStream,
    peer: SocketAddr,
    client: Arc<Client>,
    pool: Option<Arc<Pool>>,
    shutdown: CancellationToken,
) {
    let alpn = &client.alpn;
    let started = Instant::now();
    let opened = tokio::select! {
        () = shutdown.cancelled() => return info!("{alpn}: {peer}: stopped before the tunnel was open"),
        opened = open(&client, pool.as_deref(), peer, &local) => opened,
    };
    let (mut tunnel, path) = match opened {
        Ok(x) => x,
        Err(e) => return warn!("{alpn}: local connection from {peer} closed: {e}"),
    };
    let result = tokio::select! {
        () = shutdown.cancelled() => None,
        result = tokio::io::copy_bidirectional(&mut local, &mut tunnel) => Some(result),
    };
    let took = started.elapsed().as_secs_f64();
    let why = match result {
        Some(Ok((up, down))) => {
            return info!("{alpn}: {peer} via {path}: {up} bytes sent, {down} received, {took:.3}s")
        }
        Some(Err(e)) => explain(&e, path),
        None => {
            // The router learns of a deliberate end (close_notify), not a cut.
            let _ = tokio::time::timeout(CLOSE_DEADLINE, tunnel.shutdown()).await;
            "stopped (shutting down)".to_string()
        }
    };
    // The local application must not take a tunnel that did not end cleanly
    // for a clean end: it gets a reset, not a FIN.
    let reset = match local.set_zero_linger() {
        Ok(()) => "the local connection is reset",
        Err(_) => "the local connection could not be set to reset and is closed",
    };
    warn!("{alpn}: {peer} via {path}: ended after {took:.3}s: {why}; {reset}");
}

/// A tunnel for the local connection from `peer`: from `pool` if given
/// (a pre-opened tunnel when one is ready), else opened as usual.
async fn open(
    client: &Client,
    pool: Option<&Pool>,
    peer: SocketAddr,
    local: &TcpStream,
) -> Result<(Box<dyn Io>, Path), ClientError> {
    let alpn = &client.alpn;
    let Some(pool) = pool else {
        return client.connect().await;
    };
    let first = crate::early_data::first_bytes(local);
    let (stream, path, source) = pool.connect(first).await?;
    let (ready, size) = (pool.ready(), pool.size());
    match source {
        Source::Pooled { age } => info!(
            "{alpn}: {peer}: on a pre-opened tunnel via {path} (opened {:.1}s ago; {ready} of {size} ready)",
            age.as_secs_f64()
        ),
        Source::Opened => info!(
            "{alpn}: {peer}: opened a tunnel via {path}, not a pre-opened one ({ready} of {size} ready)"
        ),
    }
    Ok((stream, path))
}
