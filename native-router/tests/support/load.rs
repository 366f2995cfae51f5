//! Load for the fault tests: tunnels to an echo backend that move a verified
//! pattern continuously until told to stop, so that a fault in the middle
//! shows as a lost, altered or cut byte, and how each tunnel ended.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use alpn_protocol::framing::Io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DEADLINE;

/// The pattern's period: prime, so no chunk size lines up with it.
const PERIOD: usize = 1_000_003;
/// How much one write carries.
const CHUNK: usize = 16 * 1024;
/// How far the writer may run ahead of the echo: a tunnel that is told to
/// end has little in flight, so it ends promptly however slow the build.
const WINDOW: u64 = 512 * 1024;

/// The bytes every flow sends, from a per-flow offset, cycled.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        // One period, then its start again, so that a chunk may wrap.
        let mut p = integration_tests::payload(PERIOD, 0x5eed_fa17);
        p.extend_from_within(..CHUNK);
        p
    })
}

/// How a flow ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes the flow wrote into the tunnel.
    pub sent: u64,
    /// Bytes that came back, each one checked against the pattern.
    pub echoed: u64,
    /// How the read side ended: `Ok` at a clean end (EOF after `close_notify`).
    pub end: io::Result<()>,
    /// The position of the first byte that came back wrong, if one did.
    pub wrong_at: Option<u64>,
}

impl Outcome {
    /// Panics unless every byte sent came back, unaltered, and the tunnel
    /// ended cleanly.
    pub fn assert_complete(&self, what: &str) {
        if let Err(e) = self.complete() {
            panic!("{what}: {e}");
        }
    }

    /// Whether every byte sent came back, unaltered, and the tunnel ended
    /// cleanly; if not, what went wrong.
    pub fn complete(&self) -> Result<(), String> {
        let wrong = if self.wrong_at.is_some() {
            "an altered byte"
        } else if self.sent == 0 {
            "nothing was sent"
        } else if self.echoed != self.sent {
            "bytes lost"
        } else if self.end.is_err() {
            "not a clean end"
        } else {
            return Ok(());
        };
        Err(format!("{wrong}: {self:?}"))
    }
}

/// One tunnel under load: writes the pattern and checks the echo.
pub struct Flow {
    /// What the test calls it (the framing, say).
    pub name: String,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    /// How it ended, once it has, for messages.
    last: Arc<Mutex<String>>,
    task: JoinHandle<Outcome>,
}

impl Flow {
    /// Starts moving data through `stream`, which must reach an echo backend.
    pub fn start(name: &str, stream: Box<dyn Io>, seed: u64) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn(run(
            stream,
            seed,
            stop.clone(),
            echoed.clone(),
            last.clone(),
        ));
        Flow {
            name: name.into(),
            stop,
            echoed,
            last,
            task,
        }
    }

    /// Bytes echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }

    /// Whether the flow has ended (its tunnel closed or failed).
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until `more` bytes beyond the current count have come back.
    pub async fn progress(&self, more: u64) {
        let target = self.echoed() + more;
        let started = Instant::now();
        while self.echoed() < target {
            assert!(
                !self.ended(),
                "{}: the tunnel ended while it should move data: {}",
                self.name,
                self.last.lock().unwrap()
            );
            assert!(
                started.elapsed() < DEADLINE,
                "{}: {more} bytes did not come back within {DEADLINE:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops writing, half-closes the tunnel and returns how it ended once
    /// the echo is read to its end.
    pub async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        self.outcome().await
    }

    /// How the flow ended, without asking it to stop (for tunnels that
    /// something else ends).
    pub async fn outcome(self) -> Outcome {
        let name = self.name;
        tokio::time::timeout(DEADLINE * 2, self.task)
            .await
            .unwrap_or_else(|_| panic!("{name}: the flow did not end"))
            .unwrap()
    }
}

/// Both directions from this one task, as a tunnel stream requires (TLS and
/// the framings write from their read side).
async fn run(
    stream: Box<dyn Io>,
    seed: u64,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    last: Arc<Mutex<String>>,
) -> Outcome {
    let start = (seed as usize * 7919) % PERIOD;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let read_over = CancellationToken::new();
    let came_back = Notify::new();
    let write = async {
        let mut sent = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if sent > echoed.load(Ordering::SeqCst) + WINDOW {
                tokio::select! {
                    () = read_over.cancelled() => return sent,
                    () = came_back.notified() => continue,
                }
            }
            let at = (start + (sent as usize % PERIOD)) % PERIOD;
            let chunk = &pattern()[at..at + CHUNK];
            let wrote = tokio::select! {
                // The tunnel ended under it: nothing more can be sent.
                () = read_over.cancelled() => return sent,
                r = wr.write(chunk) => r,
            };
            match wrote {
                Ok(n) if n > 0 => sent += n as u64,
                _ => return sent,
            }
        }
        tokio::select! {
            () = read_over.cancelled() => {}
            _ = wr.shutdown() => {}
        }
        sent
    };
    let read = async {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let ended = loop {
            let n = match tokio::time::timeout(DEADLINE, rd.read(&mut buf)).await {
                Err(_) => break (Err(io::Error::other("no byte and no end in time")), None),
                Ok(Err(e)) => break (Err(e), None),
                Ok(Ok(0)) => break (Ok(()), None),
                Ok(Ok(n)) => n,
            };
            let at = (start + (got as usize % PERIOD)) % PERIOD;
            let mut wrong = None;
            for (i, b) in buf[..n].iter().enumerate() {
                let p = (at + i) % PERIOD;
                if *b != pattern()[p] {
                    wrong = Some(got + i as u64);
                    break;
                }
            }
            if wrong.is_some() {
                break (Ok(()), wrong);
            }
            got += n as u64;
            echoed.store(got, Ordering::SeqCst);
            came_back.notify_one();
        };
        read_over.cancel();
        (got, ended)
    };
    let (sent, (got, (end, wrong_at))) = tokio::join!(write, read);
    let outcome = Outcome {
        sent,
        echoed: got,
        end,
        wrong_at,
    };
    *last.lock().unwrap() = format!("{outcome:?}");
    outcome
}
