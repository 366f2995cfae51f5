//! The router's metrics, rendered as Prometheus text at `/metrics`: connections
//! by listener/framing/route, refusals, handshake failures by reason, backend
//! failures, bytes by route and direction, active tunnels, tunnel durations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the tunnel duration histogram.
const DURATION_BUCKETS: [f64; 10] = [
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// A family of counters keyed by their label values.
#[derive(Debug, Default)]
struct Counters(Mutex<BTreeMap<Vec<String>, u64>>);

impl Counters {
    fn add(&self, labels: &[&str], n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(labels.iter().map(|s| s.to_string()).collect())
            .or_default() += n;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label_names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (values, n) in map.iter() {
            let _ = writeln!(out, "{name}{{{}}} {n}", labels(label_names, values));
        }
    }
}

fn labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            format!(
                "{n}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Every metric of one router process.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Counters,
    refusals: Counters,
    handshake_failures: Counters,
    backend_failures: Counters,
    turned_away: Counters,
    bytes: Counters,
    tunnels_active: AtomicI64,
    durations: Mutex<Histogram>,
}

impl Metrics {
    /// A connection accepted on `listener` and routed (`framing` is `none` on the direct listener).
    pub fn connection(&self, listener: &str, framing: &str, route: &str) {
        self.connections.add(&[listener, framing, route], 1);
    }

    /// An upgrade refused with `status`.
    pub fn refusal(&self, status: u16) {
        self.refusals.add(&[&status.to_string()], 1);
    }

    /// An inner TLS handshake that failed for `reason`.
    pub fn handshake_failure(&self, listener: &str, reason: &str) {
        self.handshake_failures.add(&[listener, reason], 1);
    }

    /// A backend of `route` that could not be reached.
    pub fn backend_failure(&self, route: &str) {
        self.backend_failures.add(&[route], 1);
    }

    /// A connection on `listener` given no place: `cap_full` or `client_limit`.
    pub fn turned_away(&self, listener: &str, reason: &str) {
        self.turned_away.add(&[listener, reason], 1);
    }

    /// A tunnel started.
    pub fn tunnel_opened(&self) {
        self.tunnels_active.fetch_add(1, Ordering::Relaxed);
    }

    /// A tunnel of `route` ended after `duration`, having carried these bytes.
    pub fn tunnel_closed(&self, route: &str, to_backend: u64, to_client: u64, duration: Duration) {
        self.tunnels_active.fetch_sub(1, Ordering::Relaxed);
        self.bytes.add(&[route, "to_backend"], to_backend);
        self.bytes.add(&[route, "to_client"], to_client);
        let secs = duration.as_secs_f64();
        let mut h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Tunnels open now.
    pub fn active(&self) -> i64 {
        self.tunnels_active.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.connections.render(
            &mut out,
            "alpn_router_connections_total",
            "Connections routed, by listener, framing and route.",
            &["listener", "framing", "route"],
        );
        self.refusals.render(
            &mut out,
            "alpn_router_upgrade_refusals_total",
            "Upgrade requests refused, by status.",
            &["status"],
        );
        self.handshake_failures.render(
            &mut out,
            "alpn_router_handshake_failures_total",
            "Inner TLS handshakes that failed, by listener and reason.",
            &["listener", "reason"],
        );
        self.backend_failures.render(
            &mut out,
            "alpn_router_backend_failures_total",
            "Backends that could not be reached, by route.",
            &["route"],
        );
        self.turned_away.render(
            &mut out,
            "alpn_router_connections_turned_away_total",
            "Connections given no place at accept, by listener and reason (cap_full, client_limit).",
            &["listener", "reason"],
        );
        self.bytes.render(
            &mut out,
            "alpn_router_bytes_total",
            "Bytes carried by finished tunnels, by route and direction.",
            &["route", "direction"],
        );
        let _ = writeln!(out, "# HELP alpn_router_tunnels_active Tunnels open now.\n# TYPE alpn_router_tunnels_active gauge");
        let _ = writeln!(out, "alpn_router_tunnels_active {}", self.active());
        let h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        let name = "alpn_router_tunnel_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} How long tunnels lasted.\n# TYPE {name} histogram"
        );
        for (bound, n) in DURATION_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            h.count, h.sum, h.count
        );
        out
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
        m.tunnel_opened();
        m.tunnel_closed("postgresql", 10, 20, Duration::from_millis(500));
        m.handshake_failure("direct", "no_route");
        let text = m.render();
        assert!(text.contains("alpn_router_connections_total{listener=\"upgrade\",framing=\"websocket\",route=\"postgresql\"} 2"), "{text}");
        assert!(text
            .contains("alpn_router_bytes_total{route=\"postgresql\",direction=\"to_client\"} 20"));
        assert!(text.contains("alpn_router_tunnel_duration_seconds_bucket{le=\"1\"} 1"));
        assert!(text.contains("alpn_router_tunnel_duration_seconds_bucket{le=\"0.1\"} 0"));
        assert!(text.contains("alpn_router_tunnels_active 0"));
        assert!(text.contains(
            "alpn_router_handshake_failures_total{listener=\"direct\",reason=\"no_route\"} 1"
        ));
    }
}
