//! Connections refused or cut off before a tunnel (bad requests, timeouts,
//! failed handshakes, a full cap): a client chooses how many there are, so it
//! must not choose the log's volume. Each is logged at debug; at info, the
//! first few of each interval are logged one by one and the rest are counted
//! and summarised once per interval.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, Level};

/// How long one summary interval is.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Lines logged one by one per interval before the rest are only counted.
pub(crate) const LINES_PER_INTERVAL: u32 = 10;

/// The counts of the current interval.
#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    /// What was not logged one by one, by kind.
    held_back: BTreeMap<&'static str, u64>,
}

/// The cut-off log of one router process.
#[derive(Debug)]
pub(crate) struct Cutoffs {
    window: Mutex<Window>,
}

impl Default for Cutoffs {
    fn default() -> Self {
        Cutoffs {
            window: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                held_back: BTreeMap::new(),
            }),
        }
    }
}

impl Cutoffs {
    /// Reports one cut-off of `kind` (a short label such as `refused 400`);
    /// `line` is the full line, made only when it is logged.
    pub(crate) fn report(&self, kind: &'static str, line: impl FnOnce() -> String) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.started.elapsed() >= INTERVAL {
            Self::summarise(&mut w);
        }
        if w.logged < LINES_PER_INTERVAL {
            w.logged += 1;
            drop(w);
            info!("{}", line());
        } else {
            *w.held_back.entry(kind).or_default() += 1;
            drop(w);
            if tracing::enabled!(Level::DEBUG) {
                debug!("{}", line());
            }
        }
    }

    /// Logs the summary of an interval that is over, if anything was held back;
    /// the router calls it every [`INTERVAL`] so that a summary never waits for
    /// the next cut-off.
    pub(crate) fn tick(&self) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.started.elapsed() >= INTERVAL {
            Self::summarise(&mut w);
        }
    }

    fn summarise(w: &mut Window) {
        if !w.held_back.is_empty() {
            let total: u64 = w.held_back.values().sum();
            let kinds: Vec<String> = w
                .held_back
                .iter()
                .map(|(kind, n)| format!("{kind} x{n}"))
                .collect();
            info!(
                "{total} more connections refused or cut off in the last {}s, not logged one by one: {}",
                w.started.elapsed().as_secs(),
                kinds.join(", ")
            );
        }
        w.started = Instant::now();
        w.logged = 0;
        w.held_back.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn past_the_first_lines_cutoffs_are_counted_then_the_window_starts_again() {
        let cutoffs = Cutoffs::default();
        for _ in 0..LINES_PER_INTERVAL + 5 {
            cutoffs.report("refused 408", || "line".into());
        }
        {
            let w = cutoffs.window.lock().unwrap();
            assert_eq!(w.logged, LINES_PER_INTERVAL);
            assert_eq!(w.held_back.get("refused 408"), Some(&5));
        }
        tokio::time::advance(INTERVAL).await;
        cutoffs.tick();
        let w = cutoffs.window.lock().unwrap();
        assert!(
            w.held_back.is_empty() && w.logged == 0,
            "a new interval logs again"
        );
    }
}
