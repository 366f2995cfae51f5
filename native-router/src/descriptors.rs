//! File descriptors: a tunnel holds two (the client's connection and the
//! backend's), so the connection cap must fit in the process's limit, or
//! tunnels are handshaken and then fail for lack of a descriptor. At start the
//! soft limit is raised to the hard one (systemd's default soft limit is
//! 1,024); `check` and start warn when the cap still does not fit. Out of
//! descriptors all the same, a [`Spare`] lets the accept loop turn a waiting
//! connection away at once instead of leaving it in the backlog.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

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

/// Whether an accept failed for want of a file descriptor (the process's
/// limit or the system's).
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Too many open files in the process (Linux and the BSDs alike).
const EMFILE: i32 = 24;
/// Too many open files in the system.
const ENFILE: i32 = 23;

/// One file descriptor (`/dev/null`) held in reserve. Out of descriptors,
/// a connection waiting in the backlog would wait until one frees up, its
/// client with it: letting the spare go makes room to accept it and turn it
/// away at once. The spare is taken back once a descriptor is free again.
///
/// Out of descriptors, `accept(2)` fails with `EMFILE` whether a connection
/// waits or not (the descriptor is allocated first). The spare is let go only
/// when one does: let go for nothing, the descriptor it frees would go to the
/// next tunnel's dial to its backend, leaving no spare for the next client,
/// who would then wait in the backlog.
pub(crate) struct Spare(std::sync::Mutex<Option<std::fs::File>>);

impl Spare {
    pub(crate) fn new() -> Spare {
        Spare(std::sync::Mutex::new(open_spare()))
    }

    /// Lets the spare go and accepts a connection waiting on `listener`, if
    /// the spare was held and one is waiting.
    pub(crate) fn accept_with(&self, listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.is_none() || !waiting(listener) {
            return None;
        }
        drop(spare.take());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match listener.poll_accept(&mut cx) {
            std::task::Poll::Ready(Ok(accepted)) => Some(accepted),
            _ => {
                // Gone from the backlog meanwhile: the spare back at once.
                *spare = open_spare();
                None
            }
        }
    }

    /// Takes the spare back if it is not held and a descriptor is free.
    pub(crate) fn restore(&self) {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.is_none() {
            *spare = open_spare();
        }
    }
}

fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Whether a connection waits in `listener`'s backlog (a `poll(2)` that does
/// not wait, and needs no descriptor).
pub(crate) fn waiting(listener: &TcpListener) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&timeout)), Ok(1)) && fds[0].revents().contains(PollFlags::IN)
}
