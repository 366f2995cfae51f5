//! The measurements: bulk throughput through a peer, TLS handshakes per second,
//! and HTTP requests per second with wrk. Each connection is driven from one
//! task (both directions joined), as tunnel streams require.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alpn_router::tls::client_config;
use alpn_router::tunnel::Io;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Bulk throughput: `streams` connections each carry `bytes` each way at once;
/// returns MiB/s each way over all of them.
pub async fn throughput(peer: &Target, bytes: usize, streams: usize) -> io::Result<f64> {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        conns.push(connect(peer, true).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(echo(c, bytes)))
        .collect();
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((bytes * streams) as f64 / (1024.0 * 1024.0) / secs)
}

/// Full TLS handshakes per second with `concurrency` clients for `duration`.
pub async fn handshake_rate(
    peer: &Target,
    duration: Duration,
    concurrency: usize,
) -> io::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let done = done.clone();
        let peer = peer.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut s = connect(&peer, false).await?;
                // One byte each way proves the tunnel is up, not only the handshake.
                s.write_all(b"x").await?;
                let mut one = [0u8; 1];
                s.read_exact(&mut one).await?;
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

/// wrk's requests per second and 99th-percentile latency (ms) against `url`.
pub fn wrk(url: &str, duration: Duration, connections: usize) -> io::Result<(f64, f64)> {
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
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Requests/sec in wrk's output:\n{text}")))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .ok_or_else(|| io::Error::other(format!("no 99% latency in wrk's output:\n{text}")))?;
    Ok((rps, p99))
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

/// Resident memory (KiB) of process `pid` and all its descendants.
pub fn tree_rss_kib(pid: u32) -> u64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // The parent is the 4th field of /proc/PID/stat, after the parenthesised name.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        stack.extend(children.get(&p).into_iter().flatten());
    }
    total
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
    for _ in 0..count {
        held.push(open_idle(peer).await?);
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
    fn latencies_in_milliseconds() {
        assert_eq!(super::parse_latency("512.00us"), 0.512);
        assert_eq!(super::parse_latency("1.50ms"), 1.5);
        assert_eq!(super::parse_latency("2.00s"), 2000.0);
    }
}
