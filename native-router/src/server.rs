//! The listeners and the life of every connection: accept under the connection
//! cap (a full cap is answered at once), answer the upgrade (upgrade listener),
//! run the inner TLS, dial the route's backend and pipe, end the outer
//! connection as the tunnel ended, then log one line saying what happened.
//! Each connection runs in a `conn` span that carries its facts (id, peer,
//! listener, client address, framing, SNI, ALPN, route) as they become known,
//! so every line it logs names them.
//!
//! A configuration load is a [`Generation`]; a reload swaps it, and each
//! connection keeps the generation it started with, so live tunnels are not
//! touched. Shutdown stops the data listeners, reports draining on `/readyz`
//! and waits for the connections up to the drain grace period; then the
//! tunnels still open are closed deliberately (TLS `close_notify`, WebSocket
//! Close 1001), counted and logged. Every connection task (and its lingering
//! close) is tracked, so [`run`] returns only when none is left; the metrics
//! listener answers until the end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, field, info, warn, Instrument as _, Span};

use crate::admission::{ClientPlace, Places};
use crate::config::{Config, Route};
use crate::cutoffs::{self, Cutoffs};
use crate::descriptors::{self, out_of_descriptors, Spare, REFUSALS_IN_FLIGHT};
use crate::metrics::Metrics;
use crate::preopen;
use crate::tls;
use crate::tunnel::{self, Io, Quiet};
use crate::upgrade::{self, UpgradeError};
use alpn_protocol::framing::{Ending, Finish};
use alpn_protocol::framing::{Framed, Role};

/// Everything connections need from one configuration load.
pub(crate) struct Generation {
    /// The configuration.
    pub(crate) config: Config,
    /// Its TLS configurations, built once for every connection it serves.
    tls: tls::Configs,
}

impl Generation {
    /// Builds the TLS configurations of `config`.
    pub(crate) fn new(config: Config) -> Result<Generation, rustls::Error> {
        let tls = tls::Configs::new(&config)?;
        Ok(Generation { config, tls })
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
            metrics: bind(config.metrics.map(|m| m.listen), "metrics").await?,
        })
    }
}

/// The router: the current generation, the caps and the metrics.
pub struct Router {
    current: RwLock<Arc<Generation>>,
    places: Arc<Places>,
    /// Requests on the metrics listener at once (its own small cap).
    metrics_places: Arc<Semaphore>,
    /// Refusals being answered while the cap is full.
    refusals: Arc<Semaphore>,
    drain_grace: Duration,
    draining: AtomicBool,
    /// Cancelled when the drain grace period is over: every connection holds
    /// it and closes its tunnel then.
    closing: CancellationToken,
    /// Cancelled when shutdown begins: pre-opened tunnels (no inner byte yet)
    /// carry nothing to drain and end then.
    stopping: CancellationToken,
    /// Every data connection task and lingering close.
    tasks: TaskTracker,
    /// Every request on the metrics listener.
    metrics_tasks: TaskTracker,
    next_id: AtomicU64,
    metrics: Metrics,
    cutoffs: Cutoffs,
    /// A descriptor held in reserve, let go when the process is out of them.
    spare: Spare,
}

impl Router {
    /// A router serving `config`.
    pub fn new(config: Config) -> Result<Arc<Router>, rustls::Error> {
        let limits = config.limits;
        let metrics_cap = config.metrics.map_or(0, |m| m.max_connections);
        Ok(Arc::new(Router {
            current: RwLock::new(Arc::new(Generation::new(config)?)),
            places: Places::new(limits.max_connections, limits.max_connections_per_client),
            metrics_places: Arc::new(Semaphore::new(metrics_cap)),
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            drain_grace: limits.drain_grace,
            draining: AtomicBool::new(false),
            closing: CancellationToken::new(),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics_tasks: TaskTracker::new(),
            next_id: AtomicU64::new(1),
            metrics: Metrics::default(),
            cutoffs: Cutoffs::default(),
            spare: Spare::new(),
        }))
    }

    /// The generation new connections use.
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves `config` to new connections from now on; live tunnels keep theirs.
    /// Listener addresses and the connection caps are fixed at start.
    pub fn reload(&self, config: Config) -> Result<(), rustls::Error> {
        let old = self.generation();
        let (new_limits, old_limits) = (&config.limits, &old.config.limits);
        if new_limits.max_connections != old_limits.max_connections
            || new_limits.max_connections_per_client != old_limits.max_connections_per_client
            || config.upgrade.as_ref().map(|u| u.listen)
                != old.config.upgrade.as_ref().map(|u| u.listen)
            || config.direct != old.config.direct
            || config.metrics != old.config.metrics
        {
            warn!(
                "reload: listener settings, limits.max_connections and limits.max_connections_per_client take effect only at restart"
            );
        }
        let next = Arc::new(Generation::new(config)?);
        let routes: Vec<String> = next.config.routes.iter().map(route_label).collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        info!("reload: now serving routes {routes:?}");
        Ok(())
    }

    /// Connections being served now.
    pub(crate) fn active_connections(&self) -> usize {
        self.places.active()
    }

    /// Why the router is not ready for new connections, if it is not.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::SeqCst) {
            Some("draining".into())
        } else if self.places.full() {
            Some(format!(
                "at capacity: all {} connection places are taken",
                self.places.max()
            ))
        } else {
            None
        }
    }
}

/// How a route is named in logs and metrics.
pub(crate) fn route_label(route: &Route) -> String {
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

/// Serves until `shutdown` resolves, then drains: the data listeners close,
/// `/readyz` says draining, and live connections get up to the grace period;
/// after it the tunnels still open are closed deliberately. Returns when no
/// connection task is left.
pub async fn run(router: Arc<Router>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let stop_data = CancellationToken::new();
    let stop_metrics = CancellationToken::new();
    let mut data_loops = Vec::new();
    let mut metrics_loop = None;
    for (kind, listener) in [
        (Kind::Upgrade, listeners.upgrade),
        (Kind::Direct, listeners.direct),
        (Kind::Metrics, listeners.metrics),
    ] {
        if let Some(listener) = listener {
            if let Ok(addr) = listener.local_addr() {
                info!("{} listener on {addr}", kind.name());
            }
            let stop = match kind {
                Kind::Metrics => stop_metrics.clone(),
                _ => stop_data.clone(),
            };
            let task = tokio::spawn(accept_loop(router.clone(), kind, listener, stop));
            match kind {
                Kind::Metrics => metrics_loop = Some(task),
                _ => data_loops.push(task),
            }
        }
    }
    let summaries = tokio::spawn({
        let router = router.clone();
        async move {
            let mut every = tokio::time::interval(cutoffs::INTERVAL);
            loop {
                every.tick().await;
                router.cutoffs.tick();
            }
        }
    });
    shutdown.await;
    router.draining.store(true, Ordering::SeqCst);
    router.stopping.cancel();
    stop_data.cancel();
    for l in data_loops {
        let _ = l.await;
    }
    // No new connection task from here on: the tracker can empty.
    router.tasks.close();
    let active = router.active_connections();
    info!(
        "shutting down: stopped accepting; /readyz reports draining; draining {active} connections for up to {:?}",
        router.drain_grace
    );
    if timeout(router.drain_grace, router.tasks.wait())
        .await
        .is_ok()
    {
        info!("drained: every connection finished");
    } else {
        warn!(
            "drain grace period over: closing {} connections",
            router.active_connections()
        );
        let before = router.metrics.closed_at_shutdown_total();
        router.closing.cancel();
        router.tasks.wait().await;
        info!(
            "closed {} tunnels at the end of the drain grace period (TLS close_notify, WebSocket Close 1001); every connection finished",
            router.metrics.closed_at_shutdown_total() - before
        );
    }
    stop_metrics.cancel();
    if let Some(l) = metrics_loop {
        let _ = l.await;
    }
    router.metrics_tasks.close();
    router.metrics_tasks.wait().await;
    summaries.abort();
    router.cutoffs.tick();
}

async fn accept_loop(
    router: Arc<Router>,
    kind: Kind,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
        // The spare first: a descriptor that frees up at the limit goes back
        // to it before a connection can take it.
        router.spare.restore();
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if out_of_descriptors(&e) => {
                    if !descriptors::waiting(&listener) {
                        // At the limit accept(2) fails so with no connection
                        // waiting too: nothing to turn away; look again soon.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    // The connection would wait in the backlog, its client
                    // with it, until a descriptor frees up: the spare makes
                    // room to accept it and turn it away at once.
                    if let Some((socket, peer)) = router.spare.accept_with(&listener) {
                        turn_away(&router, kind, socket, peer, Refusal::NoDescriptors);
                        continue;
                    }
                    // The spare is in use: wait for a descriptor, never spin.
                    router.cutoffs.report("accept failed: out of file descriptors", || {
                        format!(
                            "{} listener: accept failed: {e}; waiting for a descriptor to free up",
                            kind.name()
                        )
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    // A connection that ended in the backlog and the like:
                    // pause instead of spinning.
                    warn!("{} listener: accept failed: {e}", kind.name());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = socket.set_nodelay(true);
        if kind != Kind::Metrics {
            crate::sockets::set_tcp_options(&socket, &router.generation().config.limits);
        }
        if kind == Kind::Metrics {
            // Its own small cap: past it a request is closed at once, so the
            // metrics listener can never hold descriptors the data path needs.
            let Ok(place) = router.metrics_places.clone().try_acquire_owned() else {
                router.metrics.turned_away("metrics", "cap_full");
                continue;
            };
            let router = router.clone();
            router.metrics_tasks.clone().spawn(async move {
                serve_metrics(&router, socket).await;
                drop(place);
            });
            continue;
        }
        // A place under the cap now, or an answer now: a full cap never
        // leaves accepted connections hanging.
        let Some(place) = router.places.try_take() else {
            turn_away(&router, kind, socket, peer, Refusal::CapFull);
            continue;
        };
        // Direct clients and untrusted upgrade peers are their own client
        // address; behind a trusted Envoy the address is known after the head.
        let client_place = if kind == Kind::Direct || !trusted(&router.generation(), peer) {
            match router.places.take_client(peer.ip()) {
                Ok(p) => p,
                Err(limit) => {
                    drop(place);
                    turn_away(&router, kind, socket, peer, Refusal::ClientLimit(limit));
                    continue;
                }
            }
        } else {
            None
        };
        let router = router.clone();
        let span = conn_span(&router, kind, peer);
        router.tasks.clone().spawn(
            async move {
                // The lingering close happens when the connection code drops the
                // socket; the place under the cap is held until it is over.
                let socket =
                    tunnel::Lingering::new(socket, Some(place)).tracked(router.tasks.clone());
                connection(&router, kind, socket, peer, client_place).await;
            }
            .instrument(span),
        );
    }
}

/// Why a connection is turned away at accept.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Every place under the cap is taken.
    CapFull,
    /// The client holds this many places already.
    ClientLimit(usize),
    /// The process is out of file descriptors.
    NoDescriptors,
}

/// Answers a connection that gets no place: 503 (cap) or 429 (per-client
/// limit) with a reason on the upgrade listener, a close on the direct one.
fn turn_away(router: &Arc<Router>, kind: Kind, socket: TcpStream, peer: SocketAddr, why: Refusal) {
    let (status, label, reason) = match why {
        Refusal::CapFull => (
            503,
            "cap_full",
            format!(
                "the router is at its connection cap ({} connections): try again later",
                router.places.max()
            ),
        ),
        Refusal::ClientLimit(limit) => (
            429,
            "client_limit",
            format!(
                "too many connections from {}: at most {limit} at once",
                peer.ip().to_canonical()
            ),
        ),
        Refusal::NoDescriptors => (
            503,
            "no_descriptors",
            "the router is out of file descriptors: try again later".to_string(),
        ),
    };
    router.metrics.turned_away(kind.name(), label);
    tracing::error_span!("conn", peer = %peer, listener = %kind.name()).in_scope(|| {
        router
            .cutoffs
            .report(label, || format!("turned away: {reason}"))
    });
    if kind == Kind::Direct {
        return; // A close: TLS has no way to say why.
    }
    router.metrics.refusal(status);
    // Bounded: past the refusals in flight, a close without an answer.
    let Ok(slot) = router.refusals.clone().try_acquire_owned() else {
        return;
    };
    let tasks = router.tasks.clone();
    tasks.clone().spawn(async move {
        // The slot is held until the lingering close is over.
        let mut socket = tunnel::Lingering::new(socket, Some(slot)).tracked(tasks);
        let retry = [("Retry-After", "1")];
        let headers: &[(&str, &str)] = match why {
            Refusal::CapFull | Refusal::NoDescriptors => &retry,
            Refusal::ClientLimit(_) => &[],
        };
        let _ = timeout(
            tunnel::LINGER,
            upgrade::refuse::<_, ()>(&mut socket, status, &reason, headers),
        )
        .await;
    });
}

/// Whether `peer` may tell the client address (`X-Alpn-Client-Addr`).
fn trusted(generation: &Generation, peer: SocketAddr) -> bool {
    generation.config.upgrade.as_ref().is_some_and(|up| {
        up.trusted_peers
            .iter()
            .any(|n| n.contains(&peer.ip().to_canonical()))
    })
}

/// Runs a phase before the tunnel (a handshake, the request head, the dial),
/// unless the drain grace period ends first: then the connection just ends.
// The phase is boxed: held inline, every phase's state would widen the
// connection's future, which each idle tunnel keeps for its whole life
// (bench-compare: 14 KiB a connection inline, 6.8 KiB boxed; 22 KiB of memory per
// idle tunnel against 16 KiB). A few short-lived allocations per connection
// are the cheaper side.
macro_rules! unless_closing {
    ($router:expr, $phase:expr $(,)?) => {
        match $router.closing.run_until_cancelled(Box::pin($phase)).await {
            Some(result) => result,
            None => return debug!("closed before its tunnel: the drain grace period is over"),
        }
    };
}

/// The span of one connection. It is at ERROR level so that it is enabled
/// whenever any of its lines is: a warning logged under `RUST_LOG=warn` still
/// names its connection. The empty fields are recorded as they become known.
fn conn_span(router: &Router, kind: Kind, peer: SocketAddr) -> Span {
    tracing::error_span!(
        "conn",
        id = router.next_id.fetch_add(1, Ordering::Relaxed),
        peer = %peer,
        listener = %kind.name(),
        client = field::Empty,
        framing = field::Empty,
        sni = field::Empty,
        alpn = field::Empty,
        route = field::Empty,
        tls = field::Empty,
    )
}

/// Records a fact of the current connection in its span.
fn note(name: &str, value: impl std::fmt::Display) {
    Span::current().record(name, field::display(value));
}

/// What the connection code needs to know about its connection.
struct Conn {
    kind: Kind,
    local: SocketAddr,
    client: SocketAddr,
    framing: &'static str,
}

async fn connection(
    router: &Arc<Router>,
    kind: Kind,
    socket: tunnel::Lingering,
    peer: SocketAddr,
    mut client_place: Option<ClientPlace>,
) {
    let generation = router.generation();
    let local = socket.local_addr().unwrap_or(peer);
    let mut conn = Conn {
        kind,
        local,
        client: peer,
        framing: "none",
    };
    if kind == Kind::Direct {
        note("client", peer);
        let mut socket = socket;
        serve_tls(router, &generation, &mut conn, &mut socket).await;
        return;
    }
    let Some(up) = generation.config.upgrade.as_ref() else {
        return warn!("closed: the configuration reloaded since start has no [upgrade]");
    };
    let limits = &generation.config.limits;
    let mut stream: Box<dyn Io> = match generation.tls.upgrade() {
        None => Box::new(socket),
        Some(acceptor) => match unless_closing!(
            router,
            timeout(limits.handshake_timeout, acceptor.accept(socket)),
        ) {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                return router.cutoffs.report("proxy TLS failed", || {
                    format!("TLS from the proxy failed: {e}")
                })
            }
            Err(_) => {
                return router.cutoffs.report("proxy TLS timeout", || {
                    "TLS from the proxy timed out".to_string()
                })
            }
        },
    };
    let pending = match unless_closing!(
        router,
        timeout(
            limits.header_timeout,
            upgrade::read_request(&mut stream, &up.names),
        ),
    ) {
        Ok(Ok(p)) => p,
        Ok(Err(UpgradeError::Refused { status, reason })) => {
            router.metrics.refusal(status);
            return router.cutoffs.report(refusal_kind(status), || {
                format!("refused {status}: {reason}")
            });
        }
        Ok(Err(e)) => return debug!("no upgrade: {e}"),
        Err(_) => {
            router.metrics.refusal(408);
            let reason = format!(
                "no complete upgrade request within {}",
                humantime::format_duration(limits.header_timeout)
            );
            let _ = upgrade::refuse::<_, ()>(&mut stream, 408, &reason, &[]).await;
            return router
                .cutoffs
                .report("refused 408", || format!("cut off: {reason}"));
        }
    };
    if let (true, Some(addr)) = (trusted(&generation, peer), pending.accepted().client_addr) {
        conn.client = SocketAddr::new(addr, 0);
    }
    note("client", conn.client);
    if client_place.is_none() {
        // Behind a trusted peer: the client it names is held to the limit.
        match router.places.take_client(conn.client.ip()) {
            Ok(p) => client_place = p,
            Err(limit) => {
                let reason = format!(
                    "too many connections from {}: at most {limit} at once",
                    conn.client.ip()
                );
                router.metrics.turned_away("upgrade", "client_limit");
                router.metrics.refusal(429);
                let _ = upgrade::refuse::<_, ()>(&mut stream, 429, &reason, &[]).await;
                return router
                    .cutoffs
                    .report("client_limit", || format!("refused 429: {reason}"));
            }
        }
    }
    let accepted = match pending.switch(&mut stream).await {
        Ok(a) => a,
        Err(e) => return debug!("answering the upgrade: {e}"),
    };
    conn.framing = accepted.framing.name();
    note("framing", conn.framing);
    let framed = Framed::new(
        accepted.framing,
        Role::Server,
        stream,
        accepted.leftover,
        up.ping_interval,
    );
    if let Some(mut primed) = await_first_byte(router, limits, framed).await {
        serve_tls(router, &generation, &mut conn, &mut primed).await;
    }
    drop(client_place);
}

/// The wait of an upgraded tunnel for its first inner byte (a pre-opened
/// tunnel waits here, pinged, up to `limits.preopen_timeout`): the stream
/// with that byte, or `None` once the connection ended as the wait did.
async fn await_first_byte(
    router: &Router,
    limits: &crate::config::Limits,
    mut framed: Framed<Box<dyn Io>>,
) -> Option<preopen::Primed<Framed<Box<dyn Io>>>> {
    let waiting = router.metrics.preopened();
    // Boxed: the wait's timer would otherwise widen every connection's future.
    let waited = Box::pin(preopen::first_byte(
        &mut framed,
        limits.preopen_timeout,
        &router.stopping,
    ))
    .await;
    drop(waiting);
    let why = match &waited {
        preopen::Waited::Byte(b) => return Some(preopen::Primed::new(framed, *b)),
        preopen::Waited::Closed => {
            "the client closed it (a pre-opened tunnel given back)".to_string()
        }
        preopen::Waited::Failed(e) => format!("reading failed: {e}"),
        preopen::Waited::Expired => format!(
            "no inner TLS byte within limits.preopen_timeout ({}): the pre-opened tunnel's wait is over",
            humantime::format_duration(limits.preopen_timeout)
        ),
        preopen::Waited::Stopping => "the router is shutting down".to_string(),
    };
    router.metrics.preopen_ended(waited.reason());
    let websocket = matches!(
        framed.framing(),
        alpn_protocol::framing::Framing::WebSocket(_)
    );
    let ending = waited.ending(websocket);
    let end = match (ending, websocket) {
        (Ending::Clean, true) => "WebSocket Close 1000",
        (Ending::GoingAway, true) => "WebSocket Close 1001",
        // A framing error has sent its own Close (1002, 1003) where it can.
        (Ending::Failed, true) => {
            "closed (WebSocket Close 1011 unless the framing's error sent its own)"
        }
        (Ending::Clean, false) => "closed",
        (_, false) => "closed at once",
    };
    info!("ended before any inner TLS byte: {why}; {end}");
    framed.finish(ending, limits.close_timeout).await;
    None
}

/// The kind a refusal is counted under in the cut-off log.
fn refusal_kind(status: u16) -> &'static str {
    match status {
        400 => "refused 400",
        404 => "refused 404",
        405 => "refused 405",
        426 => "refused 426",
        431 => "refused 431",
        _ => "refused",
    }
}

async fn serve_tls<S: Finish>(
    router: &Router,
    generation: &Generation,
    conn: &mut Conn,
    stream: &mut S,
) {
    let listener = conn.kind.name();
    let config = &generation.config;
    let limits = &config.limits;
    let (mut tls, hs) = match unless_closing!(
        router,
        timeout(
            limits.handshake_timeout,
            tls::accept(&mut *stream, generation.tls.inner(), &config.routes),
        ),
    ) {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            router.metrics.handshake_failure(listener, e.reason());
            return router
                .cutoffs
                .report("inner TLS failed", || format!("inner TLS: {e}"));
        }
        Err(_) => {
            router.metrics.handshake_failure(listener, "timeout");
            return router.cutoffs.report("inner TLS timeout", || {
                "inner TLS handshake timed out".to_string()
            });
        }
    };
    let route = &config.routes[hs.route];
    let label = route_label(route);
    if let Some(sni) = &hs.sni {
        note("sni", sni);
    }
    note("alpn", &route.alpn);
    note("route", &label);
    note("tls", hs.kind());
    router.metrics.handshake(listener, hs.kind());
    router.metrics.connection(listener, conn.framing, &label);
    let started = Instant::now();
    let backend = match unless_closing!(
        router,
        tunnel::dial(
            route,
            generation.tls.backend(hs.route),
            conn.client,
            conn.local,
            limits,
        ),
    ) {
        Ok(b) => b,
        Err(e) => {
            router.metrics.backend_failure(&label);
            warn!("backend unreachable, the client is told of a failure (no close_notify): {e}");
            // No close_notify: the client must not take this for a clean end.
            let _ = timeout(tunnel::LINGER, tls.flush()).await;
            drop(tls);
            stream.finish(Ending::Failed, limits.close_timeout).await;
            return;
        }
    };
    let bytes = router.metrics.tunnel_opened(&label);
    debug!(backend = %route.backend, "tunnel open");
    let quiet = Quiet {
        idle: route.idle_timeout,
        half_closed: limits.half_closed_timeout,
        send: limits.send_timeout,
    };
    let outcome = tunnel::pipe(&mut tls, backend, quiet, bytes, &router.closing).await;
    let ending = outcome.end.ending();
    if ending == Ending::GoingAway {
        router.metrics.closed_at_shutdown();
    }
    // close_notify only when the backend ended cleanly (or a quiet tunnel or
    // the router's shutdown closed it): after a failure the client must see a
    // truncation.
    match ending {
        Ending::Clean | Ending::GoingAway => {
            let _ = timeout(tunnel::LINGER, tls.shutdown()).await;
        }
        Ending::Failed => {
            let _ = timeout(tunnel::LINGER, tls.flush()).await;
        }
    }
    drop(tls);
    let duration = started.elapsed();
    router
        .metrics
        .tunnel_closed(&label, outcome.end.reason(), duration);
    info!(
        backend = %route.backend,
        to_backend = outcome.to_backend,
        to_client = outcome.to_client,
        duration_s = (duration.as_secs_f64() * 1000.0).round() / 1000.0,
        "ended: {}",
        outcome.end
    );
    stream.finish(ending, limits.close_timeout).await;
}

/// Answers one request on the metrics listener, within the listener's whole
/// request deadline.
async fn serve_metrics(router: &Router, mut socket: TcpStream) {
    let deadline = router
        .generation()
        .config
        .metrics
        .map_or(crate::config::MetricsListener::REQUEST_TIMEOUT, |m| {
            m.request_timeout
        });
    let _ = timeout(deadline, answer_metrics(router, &mut socket)).await;
}

async fn answer_metrics(router: &Router, socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let path = loop {
        let mut chunk = [0u8; 1024];
        let n = match socket.read(&mut chunk).await {
            Ok(n) if n > 0 => n,
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
            crate::metrics::CONTENT_TYPE,
            router.metrics.render(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => match router.not_ready() {
            Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
            None => ("200 OK", "text/plain", "ready\n".to_string()),
        },
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
