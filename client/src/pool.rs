//! `alpn-tunnel forward --pool N`: tunnels opened ahead of need (PROTOCOL.md
//! section 5, "pre-opened"). N keepers each hold one outer connection already
//! through the load balancer and upgraded, read it while it waits (so that
//! both sides' pings flow and its end is noticed) and hand it over when a
//! local connection arrives, which then needs only the inner TLS handshake.
//! A keeper whose tunnel was taken or ended opens the next one; while the
//! server cannot be reached it retries with a growing pause (up to
//! [`MAX_BACKOFF`]), so the pool refills by itself after a router restart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alpn_protocol::framing::{Ending, Finish, Framed, Framing, Io};
use log::{debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Client, ClientError, Path};

/// The most pre-opened tunnels one forward may keep: each holds a connection
/// through the load balancer and a place under the router's connection cap.
pub const MAX_POOL: usize = 100;

/// The longest pause between attempts while tunnels cannot be pre-opened.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a pool that is stopping gives each tunnel to close deliberately.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Parses `--pool`: 0 (no pool) to [`MAX_POOL`].
pub fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of tunnels"))?;
    check_size(n)
}

/// A pool size from 0 (no pool) to [`MAX_POOL`], as `--pool` and the
/// configuration file's `pool` key take it.
pub fn check_size(n: usize) -> Result<usize, String> {
    if n > MAX_POOL {
        return Err(format!(
            "{n} is more than {MAX_POOL}, the most pre-opened tunnels a forward keeps (each holds a connection through the load balancer and a place under the router's connection cap)"
        ));
    }
    Ok(n)
}

/// How [`Pool::connect`] opened a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// On a pre-opened tunnel, opened this long before.
    Pooled {
        /// Since the tunnel was upgraded.
        age: Duration,
    },
    /// From scratch: none was ready, or the pre-opened one failed.
    Opened,
}

/// An upgraded outer connection waiting for its inner TLS.
struct Carrier {
    /// The upgraded connection, in the framing the server switched to.
    framed: Framed<Box<dyn Io>>,
    /// The path it took.
    path: Path,
    /// When it was opened.
    opened: Instant,
}

/// A request for a keeper's tunnel: where to send it.
type Handover = oneshot::Sender<Carrier>;

/// The pre-opened tunnels of one forward.
pub struct Pool {
    client: Arc<Client>,
    size: usize,
    /// One entry per keeper whose tunnel is ready: send it where to hand the
    /// tunnel over. An entry whose keeper lost its tunnel is closed and skipped.
    ready: Mutex<VecDeque<oneshot::Sender<Handover>>>,
}

impl Pool {
    /// Starts `size` keepers on `tasks`; they stop (closing their tunnels
    /// deliberately) when `stop` is cancelled.
    pub fn start(
        client: Arc<Client>,
        size: usize,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            client,
            size,
            ready: Mutex::new(VecDeque::new()),
        });
        info!(
            "{}: keeping {size} tunnels pre-opened (upgraded, pinged, inner TLS not started) to {}",
            pool.client.alpn, pool.client.server
        );
        for slot in 0..size {
            tasks.spawn(keep(pool.clone(), slot, stop.clone()));
        }
        pool
    }

    /// Pre-opened tunnels ready now.
    pub fn ready(&self) -> usize {
        self.lock().iter().filter(|e| !e.is_closed()).count()
    }

    /// The pool's size.
    pub fn size(&self) -> usize {
        self.size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<Handover>>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tunnel to the routed service: the inner TLS on a pre-opened tunnel
    /// when one is ready, else (or when that handshake fails, as when the
    /// router ended the tunnel just then) one opened as [`Client::connect`]
    /// does; with how it was opened.
    ///
    /// On a pre-opened tunnel whose route takes TLS 1.3 early data
    /// ([`crate::early_data`]), `first` is awaited and what it yields (the
    /// local application's first bytes) is sent with the ClientHello, or on
    /// the tunnel opened instead; otherwise `first` is not awaited.
    pub async fn connect(
        &self,
        first: impl std::future::Future<Output = Vec<u8>>,
    ) -> Result<(Box<dyn Io>, Path, Source), ClientError> {
        let Some(carrier) = self.take().await else {
            let (stream, path) = self.client.connect().await?;
            return Ok((stream, path, Source::Opened));
        };
        let (path, age) = (carrier.path, carrier.opened.elapsed());
        let mut taken = Vec::new();
        let carrier = crate::closing::Carrier::Upgraded(carrier.framed);
        match self
            .client
            .inner_early(carrier, path, first, &mut taken)
            .await
        {
            Ok(tls) => Ok((Box::new(tls), path, Source::Pooled { age })),
            Err(e) => {
                warn!(
                    "{}: the inner TLS on a pre-opened tunnel via {path} failed ({e}): opening a new tunnel instead",
                    self.client.alpn
                );
                let (mut stream, path) = self.client.connect().await?;
                stream
                    .write_all(&taken)
                    .await
                    .map_err(|error| ClientError::InnerTls {
                        alpn: self.client.alpn.clone(),
                        path,
                        error,
                    })?;
                Ok((stream, path, Source::Opened))
            }
        }
    }

    /// A pre-opened tunnel, if one is ready; never waits for one to open.
    async fn take(&self) -> Option<Carrier> {
        loop {
            let entry = self.lock().pop_front()?;
            let (handover, tunnel) = oneshot::channel();
            if entry.send(handover).is_err() {
                continue; // That keeper's tunnel ended meanwhile.
            }
            // The keeper answers at once, or drops the request when its
            // tunnel ended at that moment.
            if let Ok(carrier) = tunnel.await {
                return Some(carrier);
            }
        }
    }
}

/// What ended a keeper's wait.
enum Held {
    Taken(Handover),
    Ended(String),
    Stopped,
}

/// One keeper: opens a tunnel, holds it until it is taken or ends, again.
async fn keep(pool: Arc<Pool>, slot: usize, stop: CancellationToken) {
    let client = &pool.client;
    let alpn = &client.alpn;
    let mut failures: u32 = 0;
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = open(client) => opened,
        };
        let (mut framed, path) = match opened {
            Ok(Some(x)) => x,
            Ok(None) => {
                if slot == 0 {
                    info!("{alpn}: the path to {} is direct TLS (no load balancer in the way): --pool pre-opens only upgraded tunnels, so connections open as usual", client.server);
                }
                return;
            }
            Err(e) => {
                failures += 1;
                let pause = backoff(failures);
                if failures == 1 {
                    warn!("{alpn}: pool: cannot pre-open a tunnel: {e}; retrying every {}s at most until it works", MAX_BACKOFF.as_secs());
                } else {
                    debug!("{alpn}: pool slot {slot}: attempt {failures} failed: {e}; next in {pause:?}");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if failures > 0 {
            info!(
                "{alpn}: pool: pre-opening works again via {path} after {failures} failed attempts"
            );
            failures = 0;
        }
        let opened_at = Instant::now();
        let (offer, request) = oneshot::channel();
        pool.lock().push_back(offer);
        debug!("{alpn}: pool slot {slot}: a tunnel is ready via {path}");
        let held = {
            let mut byte = [0u8; 1];
            tokio::select! {
                () = stop.cancelled() => Held::Stopped,
                handover = request => match handover {
                    Ok(h) => Held::Taken(h),
                    Err(_) => Held::Stopped, // The pool is gone.
                },
                // Reading answers the server's pings and sends the client's;
                // nothing else may arrive before the ClientHello.
                read = framed.read(&mut byte) => Held::Ended(match read {
                    Ok(0) => "the server closed it".to_string(),
                    Ok(_) => "the server sent bytes before the inner TLS (not the protocol)".to_string(),
                    Err(e) => format!("reading it failed: {e}"),
                }),
            }
        };
        match held {
            Held::Taken(handover) => {
                let carrier = Carrier {
                    framed,
                    path,
                    opened: opened_at,
                };
                // Refused only if the taker gave up: the tunnel is dropped.
                let _ = handover.send(carrier);
            }
            Held::Ended(why) => info!(
                "{alpn}: a pre-opened tunnel via {path} ended after {:.1}s unused: {why}; opening another",
                opened_at.elapsed().as_secs_f64()
            ),
            Held::Stopped => {
                let ending = match framed.framing() {
                    Framing::WebSocket(_) => Ending::Clean,
                    _ => Ending::Failed,
                };
                framed.finish(ending, CLOSE_DEADLINE).await;
                return;
            }
        }
    }
}

/// An upgraded connection along the client's path, or `None` when the path
/// is direct TLS (nothing to pre-open).
async fn open(client: &Client) -> Result<Option<(Framed<Box<dyn Io>>, Path)>, ClientError> {
    let Path::Upgrade(framing) = client.path().await? else {
        return Ok(None);
    };
    let framed = client.upgraded(framing).await?;
    let path = Path::Upgrade(framed.framing());
    Ok(Some((framed, path)))
}

/// The pause after `failures` failed attempts: 100 ms, doubling, at most [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(10));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_bounded_with_a_clear_error() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("100"), Ok(100));
        let e = parse_size("101").unwrap_err();
        assert!(e.contains("more than 100"), "{e}");
        assert!(parse_size("-1").unwrap_err().contains("not a number"));
    }

    #[test]
    fn the_backoff_grows_to_its_bound() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
