//! `alpn-router drain`: the steps a Pod's preStop hook runs before its Envoy and
//! router get SIGTERM, so that the load balancer stops sending new tunnels first
//! and live tunnels end on their own.
//!
//! 1. `POST /healthcheck/fail` on Envoy's admin: Envoy's `health_check` filter
//!    then fails the load balancer's health path.
//! 2. Wait `lb_grace` for the load balancer to see the target unhealthy (its
//!    interval times its unhealthy threshold).
//! 3. `POST /drain_listeners?graceful`: Envoy tells HTTP clients to close, and
//!    stops its listeners after its `--drain-time-s`. Upgraded tunnels go on.
//! 4. Poll the router's `/metrics` until `alpn_router_tunnels_active` sums to 0
//!    or the deadline passes.
//!
//! The deadline counts from the start of the command, so the whole drain takes
//! at most `deadline` (plus one HTTP call's timeout), which is what a
//! termination grace period must cover. A step that cannot be done (Envoy's
//! admin unreachable or answering an error, the metrics unreadable) is logged
//! and the remaining steps still run, since a partial drain loses less than
//! none; the outcome then says which steps failed and the command exits
//! non-zero. Reaching the deadline with tunnels left is not a failure: the
//! router's own `drain_grace` handles those after SIGTERM.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout_at, Instant};
use tracing::{error, info, warn};

/// Every HTTP call gets at most this long (connect, request, whole answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the router's metrics are read while tunnels are left.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A progress line at least this often while the count does not change.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Reading the metrics fails this many times in a row: stop waiting (the
/// router is gone, or the URL is wrong), rather than sleep until the deadline.
const METRICS_FAILURES_TO_GIVE_UP: u32 = 3;
/// The most of an answer kept: the router's `/metrics` is a few kilobytes.
const MAX_ANSWER: usize = 1 << 20;
/// The gauge whose series are summed.
const TUNNELS_ACTIVE: &str = "alpn_router_tunnels_active";

/// What `alpn-router drain` was asked to do.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Envoy's admin, `http://host:port`.
    pub envoy_admin: String,
    /// The router's metrics listener, `http://host:port` (`/metrics` is added
    /// unless the URL has a path).
    pub metrics: String,
    /// How long the load balancer needs to see the failing health check.
    pub lb_grace: Duration,
    /// The whole command's budget, from its start.
    pub deadline: Duration,
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Tunnels still live at the end (0: drained), if the metrics were read.
    pub tunnels_left: Option<u64>,
    /// How long the command took.
    pub elapsed: Duration,
    /// Steps that could not be done, each with its error.
    pub failed_steps: Vec<String>,
}

impl DrainOutcome {
    /// Every step was done (drained or not by the deadline).
    pub fn complete(&self) -> bool {
        self.failed_steps.is_empty()
    }
}

/// An HTTP call of the drain that did not give the answer expected. Each
/// variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL is not `http://host:port[/path]`.
    #[error("{0}: not an http://host:port URL")]
    BadUrl(String),
    /// Connecting, writing or reading failed.
    #[error("{url}: {error}")]
    Io {
        /// The URL called.
        url: String,
        /// What failed (in the message only, so that it is printed once).
        error: std::io::Error,
    },
    /// No complete answer within the call's timeout.
    #[error("{url}: no answer within {timeout:?}")]
    Timeout {
        /// The URL called.
        url: String,
        /// How long the call had.
        timeout: Duration,
    },
    /// The answer is not HTTP, or is larger than expected.
    #[error("{url}: unreadable answer: {reason}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An answer other than 200.
    #[error("{url}: answered {status}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The metrics have no series of the gauge.
    #[error("{url}: no {TUNNELS_ACTIVE} in the answer: is this the router's metrics listener?")]
    NoGauge {
        /// The URL called.
        url: String,
    },
}

/// Runs the four steps (module docs) and logs each. Never returns early: a
/// failed step is recorded in the outcome.
pub async fn drain(options: &DrainOptions) -> DrainOutcome {
    let start = Instant::now();
    let deadline = start + options.deadline;
    let mut failed_steps = Vec::new();
    let admin = options.envoy_admin.trim_end_matches('/');

    let url = format!("{admin}/healthcheck/fail");
    match call(&url, "POST", deadline).await {
        Ok(_) => info!(
            "Envoy's health check now fails ({url}): the load balancer will take this target out"
        ),
        Err(e) => {
            error!("could not fail Envoy's health check: {e}");
            failed_steps.push(format!("failing the health check: {e}"));
        }
    }

    let grace_end = (Instant::now() + options.lb_grace).min(deadline);
    let wait = grace_end.saturating_duration_since(Instant::now());
    info!(
        "waiting {} for the load balancer to see the target unhealthy",
        humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
    );
    tokio::time::sleep_until(grace_end).await;

    let url = format!("{admin}/drain_listeners?graceful");
    match call(&url, "POST", deadline).await {
        Ok(_) => info!("Envoy drains its listeners ({url}): open tunnels go on"),
        Err(e) => {
            error!("could not drain Envoy's listeners: {e}");
            failed_steps.push(format!("draining Envoy's listeners: {e}"));
        }
    }

    let metrics = metrics_url(&options.metrics);
    let tunnels_left = match wait_for_tunnels(&metrics, deadline).await {
        Ok(left) => Some(left),
        Err(e) => {
            error!("stopped waiting for tunnels: cannot read the router's metrics: {e}");
            failed_steps.push(format!("reading the router's metrics: {e}"));
            None
        }
    };
    let outcome = DrainOutcome {
        tunnels_left,
        elapsed: start.elapsed(),
        failed_steps,
    };
    let took = humantime::format_duration(Duration::from_secs(outcome.elapsed.as_secs()));
    match (outcome.tunnels_left, outcome.complete()) {
        (Some(0), true) => info!("drained: no tunnels left after {took}"),
        (Some(n), true) => warn!(
            "deadline reached after {took} with {n} tunnels left: the router's drain_grace handles them after SIGTERM"
        ),
        (_, false) | (None, true) => error!(
            "drain incomplete after {took}: {}",
            outcome.failed_steps.join("; ")
        ),
    }
    outcome
}

/// `/metrics` added to a bare `http://host:port`.
fn metrics_url(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains('/') && !rest.ends_with('/') {
        url.to_string()
    } else {
        format!("{}/metrics", url.trim_end_matches('/'))
    }
}

/// Polls until the tunnels sum to 0 (Ok(0)) or the deadline (Ok(left)); an
/// error after [`METRICS_FAILURES_TO_GIVE_UP`] failed reads in a row.
async fn wait_for_tunnels(url: &str, deadline: Instant) -> Result<u64, CallError> {
    let mut failures = 0;
    let mut last: Option<(u64, Instant)> = None;
    loop {
        match tunnels_active(url, deadline).await {
            Ok(0) => return Ok(0),
            Ok(n) => {
                failures = 0;
                let now = Instant::now();
                let changed = last.is_none_or(|(m, at)| m != n || now - at >= PROGRESS_EVERY);
                if changed {
                    let left = deadline.saturating_duration_since(now);
                    info!("{n} tunnels left, {}s to the deadline", left.as_secs());
                    last = Some((n, now));
                }
                if now + POLL_INTERVAL >= deadline {
                    return Ok(n);
                }
            }
            Err(e @ CallError::NoGauge { .. }) | Err(e @ CallError::BadUrl(_)) => return Err(e),
            Err(e) => {
                failures += 1;
                if failures >= METRICS_FAILURES_TO_GIVE_UP || Instant::now() >= deadline {
                    return Err(e);
                }
                warn!("reading the router's metrics failed ({failures} in a row): {e}");
            }
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// The sum of every series of `alpn_router_tunnels_active` at `url`.
async fn tunnels_active(url: &str, deadline: Instant) -> Result<u64, CallError> {
    let text = call(url, "GET", deadline).await?;
    sum_gauge(&text, TUNNELS_ACTIVE).ok_or_else(|| CallError::NoGauge {
        url: url.to_string(),
    })
}

/// Sums the samples of one metric in the Prometheus text format (a name
/// followed by labels or a space); None if it has none.
fn sum_gauge(text: &str, name: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // another metric whose name starts alike
        };
        let Some(value) = value.and_then(|v| v.split_whitespace().next()) else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            *sum.get_or_insert(0) += v.max(0.0) as u64;
        }
    }
    sum
}

/// One HTTP/1.1 request with `Connection: close`, returning the body of a 200.
///
/// Hand-written on purpose: the two endpoints are loopback HTTP/1.1 servers
/// (Envoy's admin, the router's metrics), the answers are small and closed
/// after, and no HTTP client crate is in the tree; `httparse` (already used by
/// the router) reads the head. The whole call is bounded by [`CALL_TIMEOUT`]
/// and by the drain's deadline, whichever comes first.
async fn call(url: &str, method: &str, deadline: Instant) -> Result<String, CallError> {
    let (authority, path) = split_url(url).ok_or_else(|| CallError::BadUrl(url.to_string()))?;
    // A call at or after the deadline still gets a short while: the last poll.
    let now = Instant::now();
    let until = (now + CALL_TIMEOUT).min(deadline.max(now + POLL_INTERVAL));
    let io = |error| CallError::Io {
        url: url.to_string(),
        error,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await.map_err(io)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\nUser-Agent: alpn-router-drain\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        Ok(answer)
    };
    let answer = match timeout_at(until, exchange).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(CallError::Timeout {
                url: url.to_string(),
                timeout: until - now,
            })
        }
    };
    let bad = |reason: &str| CallError::BadAnswer {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if answer.len() > MAX_ANSWER {
        return Err(bad("larger than 1 MiB"));
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("closed before the end of the head")),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let raw = &answer[head_len..];
    let body = if chunked {
        dechunk(raw).ok_or_else(|| bad("bad chunked body"))?
    } else {
        raw.to_vec()
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(CallError::Status {
            url: url.to_string(),
            status,
            body: body.trim().chars().take(200).collect(),
        });
    }
    Ok(body)
}

/// `http://host:port/path?query` into (`host:port`, `/path?query`).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then_some((authority, path))
}

/// A complete chunked body, decoded.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_the_gauge_only() {
        let text = "# HELP alpn_router_tunnels_active Live tunnels.\n\
                    # TYPE alpn_router_tunnels_active gauge\n\
                    alpn_router_tunnels_active 3\n\
                    alpn_router_tunnels_active_total 99\n\
                    alpn_router_tunnels_active{framing=\"alpn\",x=\"a}b\"} 4\n";
        assert_eq!(sum_gauge(text, TUNNELS_ACTIVE), Some(7));
        assert_eq!(
            sum_gauge("alpn_router_tunnels_active_total 5\n", TUNNELS_ACTIVE),
            None
        );
        assert_eq!(
            sum_gauge("alpn_router_tunnels_active 0\n", TUNNELS_ACTIVE),
            Some(0)
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9901/drain_listeners?graceful"),
            Some(("127.0.0.1:9901", "/drain_listeners?graceful"))
        );
        assert_eq!(
            split_url("http://localhost:9090"),
            Some(("localhost:9090", "/"))
        );
        assert_eq!(split_url("https://127.0.0.1:9901"), None);
        assert_eq!(split_url("http://127.0.0.1"), None);
        assert_eq!(
            metrics_url("http://127.0.0.1:9090"),
            "http://127.0.0.1:9090/metrics"
        );
        assert_eq!(
            metrics_url("http://127.0.0.1:9090/"),
            "http://127.0.0.1:9090/metrics"
        );
        assert_eq!(
            metrics_url("http://127.0.0.1:9090/m"),
            "http://127.0.0.1:9090/m"
        );
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
    }
}
