//! File descriptors: a tunnel holds two (the client's connection and the
//! backend's), so the connection cap must fit in the process's limit, or
//! tunnels are handshaken and then fail for lack of a descriptor. At start the
//! soft limit is raised to the hard one (systemd's default soft limit is
//! 1,024); `check` and start warn when the cap still does not fit.

use std::io;

use crate::config::Config;

/// Descriptors one tunnel holds.
pub(crate) const PER_TUNNEL: u64 = 2;
/// Refusals answered at once when the cap is full (each holds its socket for
/// a short lingering close); more are closed without an answer.
pub(crate) const REFUSALS_IN_FLIGHT: usize = 64;
/// Listeners, the runtime, logs and the like.
const RESERVE: u64 = 64;

/// The descriptors `config` needs at its caps.
pub(crate) fn needed(config: &Config) -> u64 {
    let metrics = config.metrics.map_or(0, |m| m.max_connections as u64);
    PER_TUNNEL * config.limits.max_connections as u64
        + metrics
        + REFUSALS_IN_FLIGHT as u64
        + RESERVE
}

/// The process's descriptor limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// What the process may open now.
    pub(crate) soft: u64,
    /// What the soft limit may be raised to.
    pub(crate) hard: u64,
}

/// The limits now.
pub(crate) fn limit() -> io::Result<Limit> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    Ok(Limit { soft, hard })
}

/// Raises the soft limit to the hard one; returns the limits after.
pub(crate) fn raise() -> io::Result<Limit> {
    let before = limit()?;
    rlimit::increase_nofile_limit(before.hard)?;
    limit()
}

/// A warning when `config`'s caps need more descriptors than `available`.
pub(crate) fn warning(config: &Config, available: u64) -> Option<String> {
    let need = needed(config);
    (need > available).then(|| {
        let fits = available.saturating_sub(needed_without_tunnels(config)) / PER_TUNNEL;
        format!(
            "limits.max_connections = {} needs about {need} file descriptors (two per tunnel), \
             but the process may open {available}: raise the limit (LimitNOFILE= in systemd, \
             ulimit -n) or set max_connections to at most {fits}",
            config.limits.max_connections
        )
    })
}

fn needed_without_tunnels(config: &Config) -> u64 {
    needed(config) - PER_TUNNEL * config.limits.max_connections as u64
}
