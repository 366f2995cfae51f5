//! The soak (`make soak`; minutes, so not part of `make test`): many concurrent
//! tunnels through the whole chain of real processes, each moving random data
//! both ways with SHA-256 checked at both ends, while the router's memory and
//! descriptors are sampled.
//!
//! The chain: this process's tunnels (the `alpn-tunnel` library) -> nginx
//! configured like an ALB (`deploy/load-balancers/nginx.conf`: TLS, http/1.1
//! only) -> Envoy as shipped (`envoy/behind-l7.yaml`, the filter) -> the
//! `alpn-router` binary -> a backend in this process; and the router's direct
//! TLS port. The tunnels are spread evenly over the five ways in: `alpn`,
//! `alpn-ping`, `websocket` (subprotocols `alpn` and `alpn-ping`) through the
//! load balancer, and `direct`.
//!
//! Each tunnel sends a 16-byte head (its id, its length), `len` bytes from a
//! generator seeded by its id and the SHA-256 of those bytes, then ends its
//! send side; the backend does the same the other way at the same time. Each
//! end hashes what it receives and compares with the digest that follows: the
//! backend records its verdict, the client returns its own. A tunnel is
//! corrupt when either end's digest differs, lost when it fails or the
//! backend never saw all of it.
//!
//! Phases: `SOAK_PHASES` (default `1000x10,200x100`: tunnels x MiB each).
//! The report goes to stdout and to `SOAK_REPORT` (default `SOAK.md` at the
//! repository's root), with the router's log lines for every tunnel that did
//! not close cleanly; `SOAK_ROUTER_LOG` names a file for its whole log.
//! The run fails (exit 1) if any tunnel is corrupt or
//! lost, or the router holds more descriptors after a phase than before it,
//! or still counts a tunnel active once every client is done.
//!
//! `make soak` runs it in a network namespace of its own (see [`network`]).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alpn_protocol::framing::{Framing, Io, Subprotocol};
use alpn_tunnel::{Client, ClientError, Options, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::envoy::Envoy;
use integration_tests::load_balancer::{Kind, LoadBalancer};
use rand::{RngExt as _, SeedableRng};
use sha2::{Digest, Sha256};
use support::{envoy_in_front, Pki, RouterProcess};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The ways in, by name, in the order tunnels are dealt out.
const WAYS: [(&str, Option<Framing>); 5] = [
    ("alpn", Some(Framing::Alpn)),
    ("alpn-ping", Some(Framing::AlpnPing)),
    ("websocket", Some(Framing::WebSocket(Subprotocol::Alpn))),
    (
        "websocket-ping",
        Some(Framing::WebSocket(Subprotocol::AlpnPing)),
    ),
    ("direct", None),
];

/// The load balancer's idle timeout, as shipped (an ALB's default).
const IDLE: Duration = Duration::from_secs(60);
/// The longest a read or a write may make no progress before the tunnel is
/// counted as stalled.
const STALL: Duration = Duration::from_secs(120);
/// The longest a whole phase may take.
const PHASE_DEADLINE: Duration = Duration::from_secs(60 * 60);
/// How long the router may take to give back its descriptors after a phase.
const SETTLE: Duration = Duration::from_secs(60);
/// The generator's and the hash's chunk.
const CHUNK: usize = 64 * 1024;

/// What one end found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Intact,
    Corrupt,
    Failed(String),
}

/// The backend's verdicts, by tunnel id.
type Verdicts = Arc<Mutex<BTreeMap<u64, Verdict>>>;

/// A tunnel's seed for one direction.
fn seed(id: u64, to_backend: bool) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(to_backend)
}

/// Sends `len` bytes from the generator seeded `seed`, then their SHA-256.
async fn send_random(
    wr: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).expect("a chunk");
        rng.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        stalled(wr.write_all(&buf[..n])).await?;
        left -= n as u64;
    }
    stalled(wr.write_all(&hash.finalize())).await?;
    stalled(wr.flush()).await
}

/// Reads `len` bytes and the SHA-256 that follows them, then the end of the
/// stream; whether the digest matched.
async fn receive_checked(rd: &mut (impl AsyncRead + Unpin), len: u64) -> std::io::Result<bool> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(CHUNK as u64)).expect("a chunk");
        let n = stalled(rd.read(&mut buf[..want])).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let mut digest = [0u8; 32];
    stalled(rd.read_exact(&mut digest)).await?;
    let mut rest = [0u8; 1];
    if stalled(rd.read(&mut rest)).await? != 0 {
        return Ok(false);
    }
    Ok(hash.finalize().as_slice() == digest)
}

/// `io` with the no-progress deadline.
async fn stalled<T>(
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(STALL, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no progress"))?
}

/// The backend: every connection is a tunnel's far end.
async fn backend(listener: TcpListener, verdicts: Verdicts) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // Out of descriptors, for instance: counted as lost tunnels.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let verdicts = verdicts.clone();
        tokio::spawn(async move {
            let (id, verdict) = far_end(conn).await;
            if let Some(id) = id {
                verdicts.lock().unwrap().insert(id, verdict);
            }
        });
    }
}

async fn far_end(mut conn: TcpStream) -> (Option<u64>, Verdict) {
    let mut head = [0u8; 16];
    if let Err(e) = stalled(conn.read_exact(&mut head)).await {
        return (None, Verdict::Failed(format!("head: {}", e.kind())));
    }
    let id = u64::from_be_bytes(head[..8].try_into().unwrap());
    let len = u64::from_be_bytes(head[8..].try_into().unwrap());
    let (mut rd, mut wr) = conn.split();
    let send = async {
        send_random(&mut wr, seed(id, false), len).await?;
        wr.shutdown().await
    };
    let (sent, received) = tokio::join!(send, receive_checked(&mut rd, len));
    let verdict = match (sent, received) {
        (_, Ok(false)) => Verdict::Corrupt,
        (Ok(()), Ok(true)) => Verdict::Intact,
        (Err(e), _) | (_, Err(e)) => Verdict::Failed(e.kind().to_string()),
    };
    (Some(id), verdict)
}

/// One tunnel from the client's side: connect and say so on `opened`, wait
/// for `go` (every tunnel of the phase open), then both directions at once
/// from this one task (a tunnel stream wants that); the verdict. Opening all
/// before moving data keeps the handshakes from queueing behind the data of
/// this one client process (which holds every tunnel): a first run that did
/// both at once lost a third of the tunnels to the router's 10 s handshake
/// deadline on this loaded 2-core machine.
async fn tunnel(
    client: Arc<Client>,
    id: u64,
    len: u64,
    opened: tokio::sync::mpsc::Sender<()>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> Verdict {
    let connected = tokio::time::timeout(STALL, client.connect()).await;
    let _ = opened.send(()).await;
    let stream: Box<dyn Io> = match connected {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(e)) => return Verdict::Failed(client_error_kind(&e)),
        Err(_) => return Verdict::Failed("connect: no progress".into()),
    };
    if tokio::time::timeout(PHASE_DEADLINE, go.wait_for(|go| *go))
        .await
        .is_err()
    {
        return Verdict::Failed("never told to start".into());
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let send = async {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&id.to_be_bytes());
        head[8..].copy_from_slice(&len.to_be_bytes());
        stalled(wr.write_all(&head)).await?;
        send_random(&mut wr, seed(id, true), len).await?;
        stalled(wr.shutdown()).await
    };
    let (sent, received) = tokio::join!(send, receive_checked(&mut rd, len));
    match (sent, received) {
        (_, Ok(false)) => Verdict::Corrupt,
        (Ok(()), Ok(true)) => Verdict::Intact,
        (Err(e), _) => Verdict::Failed(format!("send: {}", io_kind(&e))),
        (_, Err(e)) => Verdict::Failed(format!("receive: {}", io_kind(&e))),
    }
}

fn io_kind(e: &std::io::Error) -> String {
    if alpn_tunnel::is_truncation(e) {
        "truncated (no close_notify)".into()
    } else {
        e.kind().to_string()
    }
}

/// The variant of a client error (its details differ per tunnel).
fn client_error_kind(e: &ClientError) -> String {
    let debug = format!("{e:?}");
    let variant: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
    format!("connect: {variant}")
}

/// The router's resident memory (KiB), its peak (KiB) and its descriptors.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    fds: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Sample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        fds,
    }
}

/// A phase's figures.
struct Phase {
    tunnels: usize,
    mib: u64,
    wall: Duration,
    /// From the start to every tunnel open (or failed).
    opening: Duration,
    /// The router when every tunnel was open, before data moved.
    at_open: Sample,
    before: Sample,
    peak: Sample,
    after: Sample,
    settled_in: Option<Duration>,
    /// The router's `alpn_router_tunnels_active` after the settling wait:
    /// tunnels it still holds open although every client is done.
    active_after: Option<u64>,
    /// Per way: intact at both ends, corrupt, lost.
    by_way: BTreeMap<&'static str, [usize; 3]>,
    errors: BTreeMap<String, usize>,
    /// The kernel's TCP counters over the phase (see [`KERNEL_COUNTERS`]).
    kernel: Vec<(&'static str, u64)>,
}

impl Phase {
    fn corrupt(&self) -> usize {
        self.by_way.values().map(|c| c[1]).sum()
    }
    fn lost(&self) -> usize {
        self.by_way.values().map(|c| c[2]).sum()
    }
    fn intact(&self) -> usize {
        self.by_way.values().map(|c| c[0]).sum()
    }
    /// MiB/s through the tunnels, both directions counted, intact ones only.
    fn throughput(&self) -> f64 {
        (self.intact() as f64 * self.mib as f64 * 2.0) / self.wall.as_secs_f64()
    }
}

struct Chain {
    pki: Pki,
    router: RouterProcess,
    _envoy: Envoy,
    lb: LoadBalancer,
    verdicts: Verdicts,
}

impl Chain {
    fn client(&self, way: Option<Framing>) -> Client {
        let (url, upgrade) = match way {
            Some(f) => (format!("https://{}", self.lb.addr), UpgradeMode::Framing(f)),
            None => (
                format!("https://{}", self.router.direct),
                UpgradeMode::Never,
            ),
        };
        let timeouts = Timeouts {
            connect: STALL,
            tls: STALL,
            upgrade: STALL,
        };
        let options = Options {
            sni: Some("router.test".into()),
            ca: Some(vec![self.pki.server_ca.clone()]),
            outer_ca: Some(vec![self.lb.cert.der()]),
            upgrade,
            timeouts,
            cache: None,
            proxy: None,
            ..Options::default()
        };
        Client::new(ServerUrl::parse(&url).unwrap(), "soak", options).unwrap()
    }
}

async fn run_phase(chain: &Chain, tunnels: usize, mib: u64, first_id: u64) -> Phase {
    let pid = chain.router.pid();
    let before = sample(pid);
    let kernel_before = tcp_counters();
    let clients: Vec<Arc<Client>> = WAYS
        .iter()
        .map(|(_, f)| Arc::new(chain.client(*f)))
        .collect();
    let len = mib * 1024 * 1024;
    let started = Instant::now();
    let peak = Arc::new(Mutex::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let s = sample(pid);
                {
                    let mut p = peak.lock().unwrap();
                    p.rss_kib = p.rss_kib.max(s.rss_kib);
                    p.hwm_kib = p.hwm_kib.max(s.hwm_kib);
                    p.fds = p.fds.max(s.fds);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut tasks = Vec::with_capacity(tunnels);
    let (opened, mut opening) = tokio::sync::mpsc::channel(tunnels.max(1));
    let (go, start) = tokio::sync::watch::channel(false);
    for i in 0..tunnels {
        let way = i % WAYS.len();
        let id = first_id + i as u64;
        let client = clients[way].clone();
        let task = tunnel(client, id, len, opened.clone(), start.clone());
        tasks.push((way, id, tokio::spawn(task)));
    }
    drop(opened);
    // Every tunnel connected (or failed to): then all move data at once.
    let open_deadline = tokio::time::Instant::now() + STALL * 2;
    let mut open = 0;
    while open < tunnels {
        match tokio::time::timeout_at(open_deadline, opening.recv()).await {
            Ok(Some(())) => open += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let opening_time = started.elapsed();
    let at_open = sample(pid);
    go.send_replace(true);
    let mut by_way: BTreeMap<&'static str, [usize; 3]> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut client_verdicts = Vec::with_capacity(tunnels);
    let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;
    for (way, id, task) in tasks {
        let verdict = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => Verdict::Failed(format!("client task: {e}")),
            Err(_) => Verdict::Failed("phase deadline".into()),
        };
        client_verdicts.push((way, id, verdict));
    }
    let wall = started.elapsed();
    // The backend records its verdict once its side is done, which may come a
    // moment after the client's.
    let backend_deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < backend_deadline {
        let all_seen = {
            let seen = chain.verdicts.lock().unwrap();
            client_verdicts
                .iter()
                .all(|(_, id, _)| seen.contains_key(id))
        };
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (way, id, client) in client_verdicts {
        let server = chain.verdicts.lock().unwrap().get(&id).cloned();
        let counts = by_way.entry(WAYS[way].0).or_default();
        match (&client, server) {
            (Verdict::Intact, Some(Verdict::Intact)) => counts[0] += 1,
            (Verdict::Corrupt, _) | (_, Some(Verdict::Corrupt)) => {
                counts[1] += 1;
                let at = if client == Verdict::Corrupt {
                    "client"
                } else {
                    "backend"
                };
                *errors
                    .entry(format!("corrupt: digest differs at the {at}"))
                    .or_default() += 1;
            }
            (Verdict::Failed(kind), _) => {
                counts[2] += 1;
                *errors.entry(format!("client: {kind}")).or_default() += 1;
            }
            (Verdict::Intact, Some(Verdict::Failed(kind))) => {
                counts[2] += 1;
                *errors.entry(format!("backend: {kind}")).or_default() += 1;
            }
            (Verdict::Intact, None) => {
                counts[2] += 1;
                *errors
                    .entry("backend: never saw the tunnel".into())
                    .or_default() += 1;
            }
        }
    }
    // The router gives back every descriptor of the phase's tunnels.
    let settle_start = Instant::now();
    let mut settled_in = None;
    while settle_start.elapsed() < SETTLE {
        if sample(pid).fds <= before.fds {
            settled_in = Some(settle_start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampler.abort();
    let after = sample(pid);
    let peak = *peak.lock().unwrap();
    let kernel_after = tcp_counters();
    let kernel = KERNEL_COUNTERS
        .iter()
        .map(|(name, _)| {
            let of = |c: &BTreeMap<String, u64>| c.get(*name).copied().unwrap_or(0);
            (*name, of(&kernel_after).saturating_sub(of(&kernel_before)))
        })
        .collect();
    Phase {
        tunnels,
        mib,
        wall,
        opening: opening_time,
        at_open,
        before,
        peak,
        after,
        settled_in,
        active_after: None,
        by_way,
        errors,
        kernel,
    }
}

/// The kernel's TCP counters the report shows, with what each means. Every
/// hop of the chain shares one kernel here, and with it one TCP memory limit
/// (`net.ipv4.tcp_mem`): past its pressure mark the kernel drops segments it
/// has no memory for, and the sender waits out a retransmission timeout that
/// doubles at each loss, which can stall a tunnel for a minute.
const KERNEL_COUNTERS: [(&str, &str); 5] = [
    (
        "TCPMemoryPressures",
        "times TCP memory pressure was entered",
    ),
    (
        "TCPMemoryPressuresChrono",
        "milliseconds under TCP memory pressure",
    ),
    ("TCPRcvQDrop", "segments dropped for want of receive memory"),
    ("TCPTimeouts", "retransmission timeouts"),
    ("RetransSegs", "segments retransmitted"),
];

/// This network namespace's TCP counters (`/proc/net/netstat` and
/// `/proc/net/snmp`: a line of names, then a line of values, per group).
fn tcp_counters() -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            if !(names.starts_with("TcpExt:") || names.starts_with("Tcp:")) {
                continue;
            }
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if let Ok(v) = value.parse() {
                    counters.insert(name.to_string(), v);
                }
            }
        }
    }
    counters
}

fn in_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn report(phases: &[Phase], setup: &str, metrics: &str, started: &str) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Soak report\n");
    let _ = writeln!(
        r,
        "Written by `make soak` (`native-router/tests/soak.rs`, which says how it works); \
         run started {started}.\n"
    );
    let _ = writeln!(r, "{setup}\n");
    for p in phases {
        let _ = writeln!(r, "## {} tunnels x {} MiB each way\n", p.tunnels, p.mib);
        let _ = writeln!(
            r,
            "- tunnels intact at both ends: {} of {}; **corrupt: {}; lost: {}**",
            p.intact(),
            p.tunnels,
            p.corrupt(),
            p.lost()
        );
        let _ = writeln!(
            r,
            "- wall time: {:.1} s, of which {:.1} s opening every tunnel (all open at once, \
             then all moving data); throughput (intact tunnels, both directions, over the \
             wall time): {:.1} MiB/s",
            p.wall.as_secs_f64(),
            p.opening.as_secs_f64(),
            p.throughput()
        );
        let _ = writeln!(
            r,
            "- router with every tunnel open, before data moved: {} descriptors, {}",
            p.at_open.fds,
            in_mib(p.at_open.rss_kib)
        );
        let settled = match p.settled_in {
            Some(d) => format!(
                "back to its count before the phase {:.1} s after the last tunnel ended",
                d.as_secs_f64()
            ),
            None => format!(
                "NOT back to its count before the phase within {} s",
                SETTLE.as_secs()
            ),
        };
        let active = p
            .active_after
            .map_or_else(|| "unknown".into(), |n| n.to_string());
        let _ = writeln!(r, "- router descriptors: {settled}");
        let kernel: Vec<String> = p
            .kernel
            .iter()
            .zip(KERNEL_COUNTERS)
            .map(|((name, n), (_, what))| format!("{what} ({name}) {n}"))
            .collect();
        let _ = writeln!(
            r,
            "- the kernel's TCP counters over the phase (this network namespace, every hop): {}",
            kernel.join("; ")
        );
        let _ = writeln!(
            r,
            "- tunnels the router still counted active after that (`alpn_router_tunnels_active`): {active}\n"
        );
        let _ = writeln!(r, "| router | before | peak | after |");
        let _ = writeln!(r, "|---|---:|---:|---:|");
        let _ = writeln!(
            r,
            "| resident memory (VmRSS; peak: max of VmHWM) | {} | {} | {} |",
            in_mib(p.before.rss_kib),
            in_mib(p.peak.hwm_kib.max(p.peak.rss_kib)),
            in_mib(p.after.rss_kib)
        );
        let _ = writeln!(
            r,
            "| open descriptors (/proc/PID/fd) | {} | {} | {} |\n",
            p.before.fds, p.peak.fds, p.after.fds
        );
        let _ = writeln!(r, "| way in | tunnels | intact | corrupt | lost |");
        let _ = writeln!(r, "|---|---:|---:|---:|---:|");
        for (way, c) in &p.by_way {
            let _ = writeln!(
                r,
                "| {way} | {} | {} | {} | {} |",
                c.iter().sum::<usize>(),
                c[0],
                c[1],
                c[2]
            );
        }
        let _ = writeln!(r);
        if p.errors.is_empty() {
            let _ = writeln!(r, "Errors: none.\n");
        } else {
            let _ = writeln!(r, "Errors by kind:\n");
            for (kind, n) in &p.errors {
                let _ = writeln!(r, "- {kind}: {n}");
            }
            let _ = writeln!(r);
        }
    }
    let _ = writeln!(
        r,
        "## The router's counters at the end\n\nFrom its metrics listener, non-zero \
         `alpn_router_*` lines:\n\n```\n{metrics}```"
    );
    r
}

fn phases_from_env() -> Vec<(usize, u64)> {
    let spec = std::env::var("SOAK_PHASES").unwrap_or_else(|_| "1000x10,200x100".into());
    spec.split(',')
        .map(|p| {
            let (n, m) = p
                .trim()
                .split_once('x')
                .unwrap_or_else(|| panic!("SOAK_PHASES: {p:?} is not TUNNELSxMIB"));
            (
                n.parse()
                    .unwrap_or_else(|_| panic!("SOAK_PHASES: {n:?} is not a number")),
                m.parse()
                    .unwrap_or_else(|_| panic!("SOAK_PHASES: {m:?} is not a number")),
            )
        })
        .collect()
}

fn main() {
    let phases = phases_from_env();
    let most = phases.iter().map(|p| p.0).max().unwrap_or(0) as u64;
    // This process holds both ends of every tunnel (client and backend), and
    // its children (nginx, Envoy, the router) inherit the limit.
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let need = most * 2 + 256;
    assert!(
        limit >= need,
        "RLIMIT_NOFILE is {limit}; {most} tunnels need at least {need} here (raise the hard limit)"
    );
    let started = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let verdicts: Verdicts = Arc::default();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let backend_addr = listener.local_addr().unwrap();
    runtime.spawn(backend(listener, verdicts.clone()));

    let pki = Pki::new();
    // The shipped defaults (router.example.toml) but for the addresses.
    let toml = format!(
        "[upgrade]\nlisten = \"127.0.0.1:0\"\ntrusted_peers = [\"127.0.0.1/32\"]\n\
         [direct]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [[route]]\nalpn = \"soak\"\nbackend = \"{backend_addr}\"\n"
    );
    let router = RouterProcess::start(pki.dir.path(), &toml);
    let envoy = envoy_in_front(router.upgrade);
    let lb = LoadBalancer::start(Kind::Nginx, envoy.listener("web"), IDLE);
    let chain = Chain {
        pki,
        router,
        _envoy: envoy,
        lb,
        verdicts,
    };
    let setup = format!(
        "Chain: tunnels from one process (the `alpn-tunnel` library) -> nginx {} as an ALB \
         (`deploy/load-balancers/nginx.conf`, idle timeout {} s) -> Envoy {} as shipped \
         (`envoy/behind-l7.yaml`, the filter, `--concurrency 2`) -> `alpn-router` (pid {}, \
         binary `{}`, the shipped default limits) -> a backend in the soak's process; \
         and the router's direct TLS port. Tunnels are dealt out in turn to the five ways in \
         (`alpn`, `alpn-ping`, `websocket`, `websocket-ping` through nginx; `direct`). \
         (The client's WebSocket framing offers subprotocol `alpn-ping` before `alpn`, \
         so the router's counters below show how each `websocket` way was carried.) \
         Each moves its size in random bytes each way at once, SHA-256 checked at both ends. \
         Descriptor limit (RLIMIT_NOFILE) of every process: {limit}. Machine: {} cores, \
         load average at the start {}. {}",
        version("/usr/sbin/nginx", &["-v"], "nginx version: "),
        IDLE.as_secs(),
        version(
            &integration_tests::envoy_bin().display().to_string(),
            &["--version"],
            "version: "
        ),
        chain.router.pid(),
        env!("CARGO_BIN_EXE_alpn-router"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        network(),
    );
    println!("{setup}");
    let path = std::env::var("SOAK_REPORT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| integration_tests::root().join("SOAK.md"));
    // Written after each phase, so that a run cut short still says what ran.
    let write_report = |done: &[Phase], pending: &[(usize, u64)]| {
        let metrics: String = chain
            .router
            .get("/metrics")
            .lines()
            .filter(|l| l.starts_with("alpn_router_") && !l.ends_with(" 0"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut text = report(done, &setup, &metrics, &started);
        if !pending.is_empty() {
            let list: Vec<String> = pending
                .iter()
                .map(|(n, m)| format!("{n} tunnels x {m} MiB"))
                .collect();
            let _ = writeln!(
                text,
                "\n**Not finished: {}** (this report was written after the phases above; \
                 the next one was running or not started when the run ended).",
                list.join(", ")
            );
        }
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text
    };
    write_report(&[], &phases);
    let mut done = Vec::new();
    let mut first_id = 0u64;
    for (i, &(tunnels, mib)) in phases.iter().enumerate() {
        println!("phase: {tunnels} tunnels x {mib} MiB each way ...");
        let mut phase = runtime.block_on(run_phase(&chain, tunnels, mib, first_id));
        phase.active_after = chain
            .router
            .get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("alpn_router_tunnels_active "))
            .and_then(|v| v.trim().parse().ok());
        first_id += tunnels as u64;
        println!(
            "  intact {} corrupt {} lost {} in {:.1} s ({:.1} MiB/s); router fds {} -> {} -> {}, RSS {} -> {} -> {}, tunnels active after {:?}",
            phase.intact(),
            phase.corrupt(),
            phase.lost(),
            phase.wall.as_secs_f64(),
            phase.throughput(),
            phase.before.fds,
            phase.peak.fds,
            phase.after.fds,
            in_mib(phase.before.rss_kib),
            in_mib(phase.peak.hwm_kib.max(phase.peak.rss_kib)),
            in_mib(phase.after.rss_kib),
            phase.active_after,
        );
        done.push(phase);
        write_report(&done, &phases[i + 1..]);
    }
    let mut text = write_report(&done, &[]);
    // What the router said of every tunnel that did not close cleanly: the
    // first place to look when one is lost.
    let log = chain.router.log();
    let unclean: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ended") && !l.contains("ended: both sides closed"))
        .collect();
    if !unclean.is_empty() {
        let from = unclean.len().saturating_sub(40);
        let _ = writeln!(
            text,
            "\n## The router's log for tunnels that did not close cleanly\n\n\
             {} lines{}:\n\n```\n{}\n```",
            unclean.len(),
            if from > 0 { ", the last 40" } else { "" },
            unclean[from..].join("\n")
        );
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    if let Some(file) = std::env::var_os("SOAK_ROUTER_LOG") {
        std::fs::write(&file, &log).unwrap_or_else(|e| panic!("SOAK_ROUTER_LOG: {e}"));
    }
    println!("\n{text}");
    println!("report written to {}", path.display());
    let failed = done.iter().any(|p| {
        p.corrupt() > 0 || p.lost() > 0 || p.settled_in.is_none() || p.active_after != Some(0)
    });
    drop(chain);
    runtime.shutdown_timeout(Duration::from_secs(5));
    if failed {
        eprintln!(
            "soak FAILED: corrupt or lost tunnels, or descriptors not given back (see the report)"
        );
        std::process::exit(1);
    }
}

/// Where the soak's connections run, and with which TCP congestion control.
/// `make soak` runs it in a network namespace of its own whose congestion
/// control is `SOAK_CC` (cubic unless set): the setting applies to loopback
/// too, and under BBR (this machine's default when the soak was written) the
/// kernel paced stuck loopback sockets down to about 154 kbit/s with megabytes
/// queued, so tunnels made no progress for the soak's deadline (300 x 10 MiB:
/// 21 lost under BBR, 6 under cubic, before the client's closing handshake).
fn network() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_or_else(
            |_| "unknown".into(),
            |s| s.split_whitespace().collect::<Vec<_>>().join(" "),
        )
    };
    let cc = read("/proc/sys/net/ipv4/tcp_congestion_control");
    let (rmem, wmem) = (
        read("/proc/sys/net/ipv4/tcp_rmem"),
        read("/proc/sys/net/ipv4/tcp_wmem"),
    );
    // `make soak` passes the machine's namespace (`/proc/1/ns/net` is not
    // readable in every container, even as root) and its settings.
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let host = std::env::var_os("SOAK_HOST_NETNS").map(std::path::PathBuf::from);
    let own = matches!((ours, host), (Some(a), Some(b)) if a != b);
    let told = |var: &str| std::env::var(var).unwrap_or_else(|_| "not told".into());
    let (host_cc, host_rmem, host_wmem) = (
        told("SOAK_HOST_CC"),
        told("SOAK_HOST_RMEM"),
        told("SOAK_HOST_WMEM"),
    );
    // tcp_mem is the kernel's, not a namespace's: readable only outside.
    let tcp_mem =
        std::env::var("SOAK_HOST_TCP_MEM").unwrap_or_else(|_| read("/proc/sys/net/ipv4/tcp_mem"));
    let cc_why = "the congestion control applies to loopback too, and under \
                  BBR a loaded loopback socket was paced down to about 154 kbit/s with \
                  megabytes queued (`ss -tni`), stalling tunnels past the soak's 120 s \
                  no-progress deadline (an earlier 300 x 10 MiB run: 21 tunnels lost under \
                  BBR, 6 under cubic, at 38 against 153 MiB/s)";
    let mem_why = format!(
        "every hop shares this one kernel and its TCP memory limit (`net.ipv4.tcp_mem` \
         {tcp_mem} pages: low, pressure, high), which a deployment spreads over several \
         hosts; past the pressure mark the kernel drops segments and the sender waits out \
         retransmission timeouts that double at each loss, stalling tunnels for a minute \
         (see the kernel's counters under each phase)"
    );
    if own {
        format!(
            "Network: a namespace of its own (`make soak`: `unshare --net`, loopback only) \
             with TCP congestion control `{cc}` (`SOAK_CC`; the machine's own, left as it \
             is: `{host_cc}`) and socket buffers `tcp_rmem` {rmem}, `tcp_wmem` {wmem} \
             (`SOAK_RMEM`, `SOAK_WMEM`; the machine's: {host_rmem} and {host_wmem}). \
             Why the congestion control matters: {cc_why}. Why the buffers: {mem_why}."
        )
    } else {
        format!(
            "Network: the machine's own (not `make soak`'s namespace), TCP congestion \
             control `{cc}`, `tcp_rmem` {rmem}, `tcp_wmem` {wmem}. Why the congestion \
             control matters: {cc_why}. Why the buffers: {mem_why}."
        )
    }
}

/// A program's version: what follows `marker` on the first line of its
/// `args` output that has it (Envoy's `HASH/1.40.0/...` cut to `1.40.0`).
fn version(program: &str, args: &[&str], marker: &str) -> String {
    let output = std::process::Command::new(program).args(args).output();
    let Ok(o) = output else {
        return "(version unknown)".into();
    };
    let text =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    let found = text
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, v)| v.trim().to_string()));
    match found {
        Some(v) if v.contains('/') => v.split('/').nth(1).unwrap_or_default().to_string(),
        Some(v) => v,
        None => "(version unknown)".into(),
    }
}
