//! The measurements: bulk transfers, downloads and uploads, TLS handshakes per second, HTTP
//! requests per second with wrk, latency percentiles, and a server's memory and
//! CPU read from /proc. Each connection is driven from one task (both
//! directions joined), as tunnel streams require.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alpn_protocol::framing::Io;
use alpn_tunnel::tls::client_config;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::peers::Target;

/// Connects to `peer`, with TLS where it terminates TLS; `resume` allows TLS
/// session resumption (off for the handshake rate: every handshake is full).
async fn connect(peer: &Target, resume: bool) -> io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(peer.addr).await?;
    tcp.set_nodelay(true)?;
    let Some(cert) = &peer.cert else {
        return Ok(Box::new(tcp));
    };
    let alpn: Vec<&str> = peer.alpn.into_iter().collect();
    let mut config = (*client_config(std::slice::from_ref(cert), &alpn, None)
        .map_err(io::Error::other)?)
    .clone();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let name = ServerName::try_from("envoy.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// Sends `bytes` through one connection to the echo backend and reads them back.
async fn echo(mut stream: Box<dyn Io>, bytes: usize) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(&mut stream);
    let chunk = vec![0x5au8; 256 * 1024];
    let write = async {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        wr.flush().await
    };
    let read = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < bytes {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("echo ended after {got} of {bytes} bytes"),
                ));
            }
            got += n;
        }
        Ok(())
    };
    let (w, r) = tokio::join!(write, read);
    w?;
    r
}

/// Opens `streams` connections to `peer`.
pub async fn connect_all(peer: &Target, streams: usize) -> io::Result<Vec<Box<dyn Io>>> {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        conns.push(connect(peer, true).await?);
    }
    Ok(conns)
}

/// Sends `bytes` each way through every connection at once (to the echo
/// backend); returns the seconds it took.
pub async fn transfer(conns: Vec<Box<dyn Io>>, bytes: usize) -> io::Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(echo(c, bytes)))
        .collect();
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// MiB/s of `bytes` moved in `secs`.
pub fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Bulk throughput: `streams` connections each carry `bytes` each way at once;
/// returns MiB/s each way over all of them.
pub async fn throughput(peer: &Target, bytes: usize, streams: usize) -> io::Result<f64> {
    let conns = connect_all(peer, streams).await?;
    let secs = transfer(conns, bytes).await?;
    Ok(mib_per_s(bytes * streams, secs))
}

/// Asks the download backend, through `stream`, for `bytes` and reads them all.
pub async fn download<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: u64,
) -> io::Result<()> {
    stream.write_all(&bytes.to_be_bytes()).await?;
    stream.flush().await?;
    read_exactly(stream, bytes).await
}

/// Sends `bytes` to the upload backend through `stream` and waits for its one
/// byte that says they have all arrived.
pub async fn upload<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: u64,
) -> io::Result<()> {
    stream.write_all(&bytes.to_be_bytes()).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.flush().await?;
    let mut done = [0u8; 1];
    stream.read_exact(&mut done).await?;
    Ok(())
}

/// Reads and discards exactly `bytes`.
pub async fn read_exactly<S: AsyncRead + Unpin>(stream: &mut S, bytes: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let want = buf.len().min((bytes - got) as usize);
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended after {got} of {bytes} bytes"),
            ));
        }
        got += n as u64;
    }
    Ok(())
}

/// The middle value (the upper middle of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `p`th percentile (0 to 100) of `samples`, by the nearest-rank method.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Which TLS handshakes [`handshake_rate`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Full handshakes: the client keeps no session.
    Full,
    /// Resumed handshakes: each client resumes the session (a TLS 1.3 session
    /// ticket, PSK with ECDHE) its previous connection was given; no 0-RTT.
    Resumed,
}

/// A client configuration for `peer` (which must terminate TLS), resuming
/// sessions or not; built once per client, as its session cache must be.
fn tls_config(peer: &Target, resume: bool) -> io::Result<Arc<rustls::ClientConfig>> {
    let cert = peer
        .cert
        .as_ref()
        .ok_or_else(|| io::Error::other("handshakes need a TLS peer"))?;
    let alpn: Vec<&str> = peer.alpn.into_iter().collect();
    let mut config = (*client_config(std::slice::from_ref(cert), &alpn, None)
        .map_err(io::Error::other)?)
    .clone();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// One connection with `config`: the handshake, then one byte each way through
/// to the backend (which proves the tunnel up, and brings the session tickets
/// a TLS 1.3 server sends after its handshake). Returns whether it resumed.
async fn handshake_once(peer: &Target, config: &Arc<rustls::ClientConfig>) -> io::Result<bool> {
    let tcp = TcpStream::connect(peer.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("envoy.test").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    s.write_all(b"x").await?;
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await?;
    Ok(resumed)
}

/// TLS handshakes (`kind`) per second with `concurrency` clients for
/// `duration`. For resumed handshakes each client first makes one full
/// handshake (not counted), and a handshake the server did not resume is an
/// error: the figure would be some other mix.
pub async fn handshake_rate(
    peer: &Target,
    kind: Handshake,
    duration: Duration,
    concurrency: usize,
) -> io::Result<f64> {
    let resume = kind == Handshake::Resumed;
    let mut configs = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let config = tls_config(peer, resume)?;
        if resume {
            handshake_once(peer, &config).await?;
        }
        configs.push(config);
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for config in configs {
        let done = done.clone();
        let peer = peer.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let resumed = handshake_once(&peer, &config).await?;
                if resumed != resume {
                    return Err(io::Error::other(format!(
                        "{}: a {} handshake where a {kind:?} one was wanted",
                        peer.addr,
                        if resumed { "resumed" } else { "full" }
                    )));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    /// Requests per second.
    pub rps: f64,
    /// 99th-percentile latency, ms.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
}

/// Runs wrk (2 threads, `connections` keep-alive connections) against `url`.
pub fn wrk(url: &str, duration: Duration, connections: usize) -> io::Result<Wrk> {
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{}s", duration.as_secs().max(1)),
            "--latency",
            url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing = |what: &str| io::Error::other(format!("no {what} in wrk's output:\n{text}"));
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| missing("Requests/sec"))?;
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .ok_or_else(|| missing("99% latency"))?;
    // "  123456 requests in 10.00s, 15.00MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| missing("request count"))?;
    Ok(Wrk {
        rps,
        p99_ms,
        requests,
    })
}

/// wrk's latency (`512.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn parse_latency(v: &str) -> f64 {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

/// Process `pid` and all its descendants (nginx's master and its workers).
fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) = stat_field(p, 4) {
            children.entry(ppid as u32).or_default().push(p);
        }
    }
    let mut all = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        all.push(p);
        stack.extend(children.get(&p).into_iter().flatten());
    }
    all
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`, for the numeric
/// fields after the parenthesised name.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state).
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Resident memory (KiB) of process `pid` and all its descendants.
pub fn tree_rss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// CPU time (user + system, seconds) used so far by process `pid` and all its
/// descendants.
pub fn tree_cpu_secs(pid: u32) -> f64 {
    let ticks: u64 = tree(pid)
        .into_iter()
        .map(|p| stat_field(p, 14).unwrap_or(0) + stat_field(p, 15).unwrap_or(0))
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// CPU time (user + system, seconds) used so far by process `pid` alone (its
/// threads, not its children).
pub fn process_cpu_secs(pid: u32) -> f64 {
    let ticks = stat_field(pid, 14).unwrap_or(0) + stat_field(pid, 15).unwrap_or(0);
    ticks as f64 / clock_ticks_per_second()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), which /proc counts in.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The server's memory per idle tunnel (KiB): `count` tunnels are opened (TLS
/// done, one byte echoed through, so the backend connection exists too) and
/// held; the growth of the server's resident memory is divided by `count`.
pub async fn idle_memory(peer: &Target, pid: u32, count: usize) -> io::Result<f64> {
    // Warm up, so that the first connection's one-time allocations do not count.
    let mut held = Vec::with_capacity(count);
    for _ in 0..8 {
        held.push(open_idle(peer).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = tree_rss_kib(pid);
    for i in 0..count {
        let tunnel = open_idle(peer).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("idle tunnel {} of {count} to {}: {e}", i + 1, peer.addr),
            )
        })?;
        held.push(tunnel);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = tree_rss_kib(pid);
    drop(held);
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

async fn open_idle(peer: &Target) -> io::Result<Box<dyn Io>> {
    let mut s = connect(peer, true).await?;
    s.write_all(b"x").await?;
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(super::percentile(&samples, 50.0), 100.0);
        assert_eq!(super::percentile(&samples, 99.0), 198.0);
        assert_eq!(super::percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn a_process_tree_includes_the_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let found = super::tree(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&std::process::id()), "{found:?}");
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn own_process_uses_memory_and_cpu() {
        let me = std::process::id();
        // Burn some CPU so the tick counter has moved.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(super::tree_rss_kib(me) > 0);
        assert!(super::tree_cpu_secs(me) > 0.0);
    }

    #[test]
    fn latencies_in_milliseconds() {
        assert_eq!(super::parse_latency("512.00us"), 0.512);
        assert_eq!(super::parse_latency("1.50ms"), 1.5);
        assert_eq!(super::parse_latency("2.00s"), 2000.0);
    }
}
