//! The router's metrics, served at `/metrics` as OpenMetrics text: connections
//! by listener/framing/route, refusals, handshake failures by reason, backend
//! failures, connections turned away, bytes by route and direction (counted as
//! they pass, so a long tunnel shows its traffic while it runs), tunnels
//! ended by route and reason, active tunnels, tunnel durations, tunnels
//! closed at the end of a drain, and upgraded tunnels waiting for their first
//! inner byte (pre-opened ones) with why such waits ended without one.
//!
//! Each family has a typed label set; an increment is an atomic add on a
//! counter found by its labels (a tunnel holds its byte counters, so the bytes
//! it carries cost no look-up at all).

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::render`].
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the tunnel duration histogram.
const DURATION_BUCKETS: [f64; 10] = [
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// A connection routed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: &'static str,
    /// `none` on the direct listener.
    framing: &'static str,
    route: String,
}

/// An upgrade refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

/// A listener and why a connection ended there (handshake failures, turned away).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

/// A listener and the kind of an inner TLS handshake.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: &'static str,
    kind: &'static str,
}

/// A route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// A route and why a tunnel of it ended (`tunnel::End::reason`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    route: String,
    reason: &'static str,
}

/// A route and a direction (`to_backend`, `to_client`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    route: String,
    direction: &'static str,
}

/// The byte counters of one route, held by its tunnels while they run.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteBytes {
    /// Bytes from clients to the backend.
    pub(crate) to_backend: Counter,
    /// Bytes from the backend to clients.
    pub(crate) to_client: Counter,
}

/// Every metric of one router process.
pub(crate) struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    refusals: Family<StatusLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    backend_failures: Family<RouteLabels, Counter>,
    turned_away: Family<ReasonLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    tunnels_ended: Family<EndLabels, Counter>,
    tunnels_active: Gauge,
    durations: Histogram,
    closed_at_shutdown: Counter,
    preopened_waiting: Gauge,
    preopen_ended: Family<PreopenLabels, Counter>,
}

/// Why an upgraded tunnel's wait for its first inner byte ended without one.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PreopenLabels {
    reason: &'static str,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            refusals: Family::default(),
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            backend_failures: Family::default(),
            turned_away: Family::default(),
            bytes: Family::default(),
            tunnels_ended: Family::default(),
            tunnels_active: Gauge::default(),
            durations: Histogram::new(DURATION_BUCKETS),
            closed_at_shutdown: Counter::default(),
            preopened_waiting: Gauge::default(),
            preopen_ended: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "alpn_router_connections",
            "Connections routed, by listener, framing and route",
            m.connections.clone(),
        );
        r.register(
            "alpn_router_upgrade_refusals",
            "Upgrade requests refused, by status",
            m.refusals.clone(),
        );
        r.register(
            "alpn_router_inner_handshakes",
            "Inner TLS handshakes that succeeded, by listener and kind (full, resumed, resumed_0rtt: resumed with early data)",
            m.handshakes.clone(),
        );
        r.register(
            "alpn_router_handshake_failures",
            "Inner TLS handshakes that failed, by listener and reason",
            m.handshake_failures.clone(),
        );
        r.register(
            "alpn_router_backend_failures",
            "Backends that could not be reached, by route",
            m.backend_failures.clone(),
        );
        r.register(
            "alpn_router_connections_turned_away",
            "Connections given no place at accept, by listener and reason (cap_full, client_limit, no_descriptors)",
            m.turned_away.clone(),
        );
        r.register(
            "alpn_router_bytes",
            "Bytes carried by tunnels, counted as they pass, by route and direction",
            m.bytes.clone(),
        );
        r.register(
            "alpn_router_tunnels_ended",
            "Tunnels ended, by route and reason (closed, idle, half_closed, client_error, backend_error, client_stalled, backend_stalled, shutdown)",
            m.tunnels_ended.clone(),
        );
        r.register(
            "alpn_router_tunnels_active",
            "Tunnels open now",
            m.tunnels_active.clone(),
        );
        r.register_with_unit(
            "alpn_router_tunnel_duration",
            "How long tunnels lasted",
            Unit::Seconds,
            m.durations.clone(),
        );
        r.register(
            "alpn_router_tunnels_closed_at_shutdown",
            "Tunnels closed by the router because the drain grace period ended",
            m.closed_at_shutdown.clone(),
        );
        r.register(
            "alpn_router_preopened_waiting",
            "Upgraded tunnels waiting for their first inner byte now (pre-opened tunnels; each holds a place under the connection cap)",
            m.preopened_waiting.clone(),
        );
        r.register(
            "alpn_router_preopen_ended",
            "Upgraded tunnels that ended before their first inner byte, by reason (expired: limits.preopen_timeout; closed: the client closed it; error; shutdown)",
            m.preopen_ended.clone(),
        );
        m
    }
}

impl Metrics {
    /// A connection accepted on `listener` and routed (`framing` is `none` on the direct listener).
    pub(crate) fn connection(&self, listener: &'static str, framing: &'static str, route: &str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                listener,
                framing,
                route: route.to_string(),
            })
            .inc();
    }

    /// An upgrade refused with `status`.
    pub(crate) fn refusal(&self, status: u16) {
        self.refusals.get_or_create(&StatusLabels { status }).inc();
    }

    /// An inner TLS handshake of `kind` that succeeded.
    pub(crate) fn handshake(&self, listener: &'static str, kind: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { listener, kind })
            .inc();
    }

    /// An inner TLS handshake that failed for `reason`.
    pub(crate) fn handshake_failure(&self, listener: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { listener, reason })
            .inc();
    }

    /// A backend of `route` that could not be reached.
    pub(crate) fn backend_failure(&self, route: &str) {
        self.backend_failures
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .inc();
    }

    /// A connection on `listener` given no place: `cap_full`, `client_limit` or
    /// `no_descriptors`.
    pub(crate) fn turned_away(&self, listener: &'static str, reason: &'static str) {
        self.turned_away
            .get_or_create(&ReasonLabels { listener, reason })
            .inc();
    }

    /// A tunnel of `route` started: the byte counters it adds to as bytes pass.
    pub(crate) fn tunnel_opened(&self, route: &str) -> RouteBytes {
        self.tunnels_active.inc();
        let counter = |direction| {
            self.bytes.get_or_create_owned(&BytesLabels {
                route: route.to_string(),
                direction,
            })
        };
        RouteBytes {
            to_backend: counter("to_backend"),
            to_client: counter("to_client"),
        }
    }

    /// A tunnel of `route` ended for `reason` after `duration` (its bytes are
    /// counted already).
    pub(crate) fn tunnel_closed(&self, route: &str, reason: &'static str, duration: Duration) {
        self.tunnels_ended
            .get_or_create(&EndLabels {
                route: route.to_string(),
                reason,
            })
            .inc();
        self.tunnels_active.dec();
        self.durations.observe(duration.as_secs_f64());
    }

    /// A tunnel closed because the drain grace period ended.
    pub(crate) fn closed_at_shutdown(&self) {
        self.closed_at_shutdown.inc();
    }

    /// Tunnels closed so far because the drain grace period ended.
    pub(crate) fn closed_at_shutdown_total(&self) -> u64 {
        self.closed_at_shutdown.get()
    }

    /// An upgraded tunnel starts waiting for its first inner byte; the guard
    /// counts it until dropped.
    pub(crate) fn preopened(&self) -> Waiting {
        self.preopened_waiting.inc();
        Waiting(self.preopened_waiting.clone())
    }

    /// An upgraded tunnel ended before its first inner byte, for `reason`.
    pub(crate) fn preopen_ended(&self, reason: &'static str) {
        self.preopen_ended
            .get_or_create(&PreopenLabels { reason })
            .inc();
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts one tunnel in `alpn_router_preopened_waiting` while it lives.
pub(crate) struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connection("upgrade", "websocket", "postgresql");
        m.connection("upgrade", "websocket", "postgresql");
        let bytes = m.tunnel_opened("postgresql");
        bytes.to_backend.inc_by(10);
        bytes.to_client.inc_by(20);
        m.tunnel_closed("postgresql", "client_stalled", Duration::from_millis(500));
        m.handshake_failure("direct", "no_route");
        m.refusal(426);
        let text = m.render();
        assert!(text.contains("alpn_router_connections_total{listener=\"upgrade\",framing=\"websocket\",route=\"postgresql\"} 2"), "{text}");
        assert!(
            text.contains(
                "alpn_router_bytes_total{route=\"postgresql\",direction=\"to_client\"} 20"
            ),
            "{text}"
        );
        assert!(
            text.contains("alpn_router_tunnel_duration_seconds_bucket{le=\"1.0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("alpn_router_tunnel_duration_seconds_bucket{le=\"0.1\"} 0"),
            "{text}"
        );
        assert!(text.contains("alpn_router_tunnels_active 0"), "{text}");
        assert!(
            text.contains(
                "alpn_router_tunnels_ended_total{route=\"postgresql\",reason=\"client_stalled\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "alpn_router_handshake_failures_total{listener=\"direct\",reason=\"no_route\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("alpn_router_upgrade_refusals_total{status=\"426\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn bytes_show_while_the_tunnel_runs() {
        let m = Metrics::default();
        let bytes = m.tunnel_opened("redis");
        bytes.to_backend.inc_by(7);
        let text = m.render();
        assert!(
            text.contains("alpn_router_bytes_total{route=\"redis\",direction=\"to_backend\"} 7"),
            "{text}"
        );
        assert!(text.contains("alpn_router_tunnels_active 1"), "{text}");
    }
}
