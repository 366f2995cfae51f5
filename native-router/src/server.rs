//! The listeners and the life of every connection: accept under the connection
//! cap, answer the upgrade (upgrade listener), run the inner TLS, dial the
//! route's backend and pipe, then log one line saying what happened.
//!
//! A configuration load is a [`Generation`]; a reload swaps it, and each
//! connection keeps the generation it started with, so live tunnels are not
//! touched. Shutdown stops the accept loops and waits for the connections (all
//! the cap's permits back) up to the drain grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{timeout, Instant};

use crate::config::{Config, Route};
use crate::framing::{Framed, Role};
use crate::metrics::Metrics;
use crate::tls::{self, InnerTls};
use crate::tunnel::{self, Io};
use crate::upgrade::{self, UpgradeError};

/// Everything connections need from one configuration load.
pub struct Generation {
    /// The configuration.
    pub config: Config,
    inner_tls: InnerTls,
    upgrade_tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Generation {
    /// Builds the TLS configurations of `config`.
    pub fn new(config: Config) -> Result<Generation, rustls::Error> {
        let inner_tls = InnerTls::new(&config)?;
        let upgrade_tls = match config.upgrade.as_ref().and_then(|u| u.tls.as_ref()) {
            None => None,
            Some(ck) => {
                let mut server = rustls::ServerConfig::builder_with_provider(tls::provider())
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(ck.chain.clone(), ck.key.clone_key())?;
                server.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
            }
        };
        Ok(Generation {
            config,
            inner_tls,
            upgrade_tls,
        })
    }
}

/// The bound listeners; bind them first, so that tests can use port 0.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Where Envoy forwards upgrades.
    pub upgrade: Option<TcpListener>,
    /// TLS routing with no upgrade in front.
    pub direct: Option<TcpListener>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener `config` names.
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        async fn bind(addr: Option<SocketAddr>, what: &str) -> io::Result<Option<TcpListener>> {
            match addr {
                None => Ok(None),
                Some(a) => TcpListener::bind(a).await.map(Some).map_err(|e| {
                    io::Error::new(e.kind(), format!("binding the {what} listener to {a}: {e}"))
                }),
            }
        }
        Ok(Listeners {
            upgrade: bind(config.upgrade.as_ref().map(|u| u.listen), "upgrade").await?,
            direct: bind(config.direct, "direct").await?,
            metrics: bind(config.metrics, "metrics").await?,
        })
    }
}

/// The router: the current generation, the connection cap and the metrics.
pub struct Router {
    current: RwLock<Arc<Generation>>,
    cap: Arc<Semaphore>,
    max_connections: usize,
    drain_grace: Duration,
    draining: AtomicBool,
    next_id: AtomicU64,
    metrics: Metrics,
}

impl Router {
    /// A router serving `config`.
    pub fn new(config: Config) -> Result<Arc<Router>, rustls::Error> {
        let limits = config.limits;
        Ok(Arc::new(Router {
            current: RwLock::new(Arc::new(Generation::new(config)?)),
            cap: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: limits.max_connections,
            drain_grace: limits.drain_grace,
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            metrics: Metrics::default(),
        }))
    }

    /// The generation new connections use.
    pub fn generation(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves `config` to new connections from now on; live tunnels keep theirs.
    /// Listener addresses and the connection cap are fixed at start.
    pub fn reload(&self, config: Config) -> Result<(), rustls::Error> {
        let old = self.generation();
        if config.limits.max_connections != self.max_connections
            || config.upgrade.as_ref().map(|u| u.listen)
                != old.config.upgrade.as_ref().map(|u| u.listen)
            || config.direct != old.config.direct
            || config.metrics != old.config.metrics
        {
            warn!(
                "reload: listener addresses and limits.max_connections take effect only at restart"
            );
        }
        let next = Arc::new(Generation::new(config)?);
        let routes: Vec<String> = next.config.routes.iter().map(route_label).collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        info!("reload: now serving routes {routes:?}");
        Ok(())
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.max_connections - self.cap.available_permits()
    }
}

/// How a route is named in logs and metrics.
pub fn route_label(route: &Route) -> String {
    match &route.sni {
        Some(sni) => format!("{}@{sni}", route.alpn),
        None => route.alpn.clone(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upgrade,
    Direct,
    Metrics,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Upgrade => "upgrade",
            Kind::Direct => "direct",
            Kind::Metrics => "metrics",
        }
    }
}

/// Serves until `shutdown` resolves, then drains.
pub async fn run(router: Arc<Router>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    for (kind, listener) in [
        (Kind::Upgrade, listeners.upgrade),
        (Kind::Direct, listeners.direct),
        (Kind::Metrics, listeners.metrics),
    ] {
        if let Some(listener) = listener {
            if let Ok(addr) = listener.local_addr() {
                info!("{} listener on {addr}", kind.name());
            }
            loops.push(tokio::spawn(accept_loop(
                router.clone(),
                kind,
                listener,
                stop_rx.clone(),
            )));
        }
    }
    shutdown.await;
    router.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let active = router.active_connections();
    info!(
        "shutting down: stopped accepting; draining {active} connections for up to {:?}",
        router.drain_grace
    );
    let all = u32::try_from(router.max_connections).unwrap_or(u32::MAX);
    match timeout(router.drain_grace, router.cap.acquire_many(all)).await {
        Ok(_) => info!("drained: every connection finished"),
        Err(_) => warn!(
            "drain grace period over: closing {} connections",
            router.active_connections()
        ),
    }
}

async fn accept_loop(
    router: Arc<Router>,
    kind: Kind,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut at_cap = false;
    loop {
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warn!("{} listener: accept failed: {e}", kind.name());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Accepted first, then a place under the cap: listeners sharing the cap
        // never hold places while idle. The metrics listener is outside the cap,
        // so it answers even when the cap is reached.
        let permit = if kind == Kind::Metrics {
            None
        } else {
            let full = router.cap.available_permits() == 0;
            if full && !at_cap {
                warn!(
                    "connection cap of {} reached: new {} connections wait for a free place",
                    router.max_connections,
                    kind.name()
                );
            }
            at_cap = full;
            tokio::select! {
                p = router.cap.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => return },
                _ = stop.changed() => return,
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            if kind == Kind::Metrics {
                return serve_metrics(&router, socket).await;
            }
            // The lingering close happens when the connection code drops the
            // socket; the place under the cap is held until it is over.
            let socket = tunnel::Lingering::new(socket, permit);
            connection(&router, kind, socket, peer).await;
        });
    }
}

/// What one connection's log line reports.
struct Conn {
    id: u64,
    kind: Kind,
    peer: SocketAddr,
    local: SocketAddr,
    client: SocketAddr,
    framing: &'static str,
}

async fn connection(router: &Router, kind: Kind, socket: tunnel::Lingering, peer: SocketAddr) {
    let id = router.next_id.fetch_add(1, Ordering::Relaxed);
    let generation = router.generation();
    let local = socket.local_addr().unwrap_or(peer);
    let mut conn = Conn {
        id,
        kind,
        peer,
        local,
        client: peer,
        framing: "none",
    };
    if kind == Kind::Direct {
        return serve_tls(router, &generation, &mut conn, socket).await;
    }
    let Some(up) = generation.config.upgrade.as_ref() else {
        return warn!("conn {id} peer={peer} listener=upgrade: closed: the configuration reloaded since start has no [upgrade]");
    };
    let limits = &generation.config.limits;
    let mut stream: Box<dyn Io> = match &generation.upgrade_tls {
        None => Box::new(socket),
        Some(acceptor) => match timeout(limits.handshake_timeout, acceptor.accept(socket)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                return info!(
                    "conn {id} peer={peer} listener=upgrade: TLS from the proxy failed: {e}"
                )
            }
            Err(_) => {
                return info!(
                    "conn {id} peer={peer} listener=upgrade: TLS from the proxy timed out"
                )
            }
        },
    };
    let accepted = match timeout(
        limits.header_timeout,
        upgrade::accept(&mut stream, &up.path),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(UpgradeError::Refused { status, reason })) => {
            router.metrics.refusal(status);
            return info!("conn {id} peer={peer} listener=upgrade: refused {status}: {reason}");
        }
        Ok(Err(e)) => return debug!("conn {id} peer={peer} listener=upgrade: no upgrade: {e}"),
        Err(_) => {
            router.metrics.refusal(408);
            let reason = format!(
                "no complete upgrade request within {}",
                humantime::format_duration(limits.header_timeout)
            );
            let _ = upgrade::refuse(&mut stream, 408, &reason, &[]).await;
            return info!("conn {id} peer={peer} listener=upgrade: cut off: {reason}");
        }
    };
    let trusted = up
        .trusted_peers
        .iter()
        .any(|n| n.contains(&peer.ip().to_canonical()));
    if let (true, Some(addr)) = (trusted, accepted.client_addr) {
        conn.client = SocketAddr::new(addr, 0);
    }
    conn.framing = accepted.framing.name();
    let framed = Framed::new(
        accepted.framing,
        Role::Server,
        stream,
        accepted.leftover,
        up.ping_interval,
    );
    serve_tls(router, &generation, &mut conn, framed).await;
}

async fn serve_tls<S: AsyncRead + AsyncWrite + Unpin>(
    router: &Router,
    generation: &Generation,
    conn: &mut Conn,
    stream: S,
) {
    let Conn {
        id, peer, client, ..
    } = *conn;
    let listener = conn.kind.name();
    let config = &generation.config;
    let (tls, hs) = match timeout(
        config.limits.handshake_timeout,
        tls::accept(stream, &generation.inner_tls, &config.routes),
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            router.metrics.handshake_failure(listener, e.reason());
            return info!("conn {id} peer={peer} client={client} listener={listener} framing={}: inner TLS: {e}", conn.framing);
        }
        Err(_) => {
            router.metrics.handshake_failure(listener, "timeout");
            return info!("conn {id} peer={peer} client={client} listener={listener} framing={}: inner TLS handshake timed out", conn.framing);
        }
    };
    let route = &config.routes[hs.route];
    let label = route_label(route);
    let sni = hs.sni.as_deref().unwrap_or("-");
    router.metrics.connection(listener, conn.framing, &label);
    let started = Instant::now();
    let backend = match tunnel::dial(route, client, conn.local, config.limits.connect_timeout).await
    {
        Ok(b) => b,
        Err(e) => {
            router.metrics.backend_failure(&label);
            let mut tls = tls;
            let _ = timeout(tunnel::LINGER, tls.shutdown()).await;
            return warn!(
                "conn {id} peer={peer} client={client} listener={listener} framing={} sni={sni} alpn={} route={label}: backend unreachable, client closed: {e}",
                conn.framing, route.alpn
            );
        }
    };
    router.metrics.tunnel_opened();
    debug!("conn {id} peer={peer} client={client} listener={listener} framing={} sni={sni} alpn={} route={label} backend={}: tunnel open", conn.framing, route.alpn, route.backend);
    let mut tls = tls;
    let outcome = tunnel::pipe(&mut tls, backend, route.idle_timeout).await;
    // An idle or failed tunnel still ends with TLS close_notify, so the client
    // sees a clean close rather than a truncation.
    let _ = timeout(tunnel::LINGER, tls.shutdown()).await;
    let duration = started.elapsed();
    router
        .metrics
        .tunnel_closed(&label, outcome.to_backend, outcome.to_client, duration);
    info!(
        "conn {id} peer={peer} client={client} listener={listener} framing={} sni={sni} alpn={} route={label} backend={} to_backend={} to_client={} duration={:.3}s ended: {}",
        conn.framing,
        route.alpn,
        route.backend,
        outcome.to_backend,
        outcome.to_client,
        duration.as_secs_f64(),
        outcome.end
    );
}

/// Answers one request on the metrics listener.
async fn serve_metrics(router: &Router, mut socket: TcpStream) {
    let mut buf = Vec::new();
    let path = loop {
        let mut chunk = [0u8; 1024];
        let n = match timeout(Duration::from_secs(5), socket.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break req
                    .path
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string()
            }
            Ok(httparse::Status::Partial) if buf.len() < 8192 => {}
            _ => return,
        }
    };
    let (status, content_type, body) = match path.as_str() {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            router.metrics.render(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if router.draining.load(Ordering::SeqCst) => (
            "503 Service Unavailable",
            "text/plain",
            "draining\n".to_string(),
        ),
        "/readyz" => ("200 OK", "text/plain", "ready\n".to_string()),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(body.as_bytes()).await;
    let _ = socket.shutdown().await;
}
