//! Faults on the client's edge of the router, through the upgrade listener in
//! every framing and through the direct listener: a client that never reads
//! while the backend sends, one that reads a byte a second, and one that
//! disappears without a FIN. Each holds a backend connection and a place under
//! the cap; the router must give both back within its configured deadlines
//! (`send_timeout` for a client that takes no byte, TCP keepalive and
//! `tcp_user_timeout` for one that is gone), keep its memory per tunnel
//! bounded meanwhile, and say in its log and metrics why the tunnels ended.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use alpn_protocol::framing::Io;
use support::{addr_for, DEADLINE};
use support::{config, name, tunnel, tunnel_over, InProcessRouter, Pki, RouterProcess, FRAMINGS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// How each backend connection ended: the bytes it carried and the error or
/// EOF that ended it.
type Ends = mpsc::Receiver<(u64, String)>;

/// A backend that writes to every connection as fast as it is let, until a
/// write fails (the router let the connection go).
fn endless_backend() -> (SocketAddr, Ends) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                let chunk = integration_tests::payload(64 * 1024, 5);
                let mut sent = 0u64;
                let end = loop {
                    match conn.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = tx.send((sent, end));
            });
        }
    });
    (addr, rx)
}

/// A backend that echoes and, when `ticking`, also writes a byte every 200 ms;
/// it reports once its connection ends (EOF or an error).
fn watched_backend(ticking: bool) -> (SocketAddr, Ends) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                let mut carried = 0u64;
                let end = loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break "EOF".to_string(),
                        Ok(n) => {
                            carried += n as u64;
                            if let Err(e) = conn.write_all(&buf[..n]) {
                                break e.to_string();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if ticking {
                                if let Err(e) = conn.write_all(b".") {
                                    break e.to_string();
                                }
                            }
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = tx.send((carried, end));
            });
        }
    });
    (addr, rx)
}

fn route_to(addr: SocketAddr) -> String {
    format!("[[route]]\nalpn = \"bulk\"\nbackend = \"{addr}\"\n")
}

/// A field of `/proc/PID/status` in kB (`VmRSS`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The descriptors `pid` holds.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The value of the metric line starting with `series` (`name{labels}`).
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Reads one byte a second until `stop` fires; returns the stream and the
/// bytes read.
async fn read_a_byte_a_second(
    mut s: Box<dyn Io>,
    mut stop: oneshot::Receiver<()>,
) -> (Box<dyn Io>, usize) {
    let mut read = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return (s, read),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let mut one = [0u8; 1];
        tokio::select! {
            _ = &mut stop => return (s, read),
            r = s.read(&mut one) => match r {
                Ok(1) => read += 1,
                _ => return (s, read),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_are_cut_off_at_the_send_timeout_with_bounded_memory() {
    let pki = Pki::new();
    let (backend, ends) = endless_backend();
    let toml = config(&route_to(backend)).replace(
        "[limits]\n",
        "[limits]\nsend_timeout = \"2s\"\nclose_timeout = \"2s\"\n",
    );
    // The real process: its memory and descriptors are what is measured.
    let router = RouterProcess::start(pki.dir.path(), &toml);
    let pid = router.pid();
    let (rss_before, fds_before) = (status_kb(pid, "VmRSS:"), descriptors(pid));
    // Per way in: a client that never reads and one that reads a byte a second.
    let mut never = Vec::new();
    let mut slow = Vec::new();
    for f in FRAMINGS {
        let (s, _) = tunnel(&pki, addr_for(&router, f), f, &["bulk"], None)
            .await
            .unwrap();
        never.push((f, s));
        let (s, _) = tunnel(&pki, addr_for(&router, f), f, &["bulk"], None)
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel();
        slow.push((f, stop, tokio::spawn(read_a_byte_a_second(s, stopped))));
    }
    let tunnels = never.len() + slow.len();
    // Every backend connection is let go; the router's memory stays flat
    // while the backends push as fast as they are let.
    let started = Instant::now();
    let mut rss_peak = rss_before;
    let mut freed = Vec::new();
    while freed.len() < tunnels {
        rss_peak = rss_peak.max(status_kb(pid, "VmRSS:"));
        match ends.recv_timeout(Duration::from_millis(50)) {
            Ok(end) => freed.push(end),
            Err(_) => assert!(
                started.elapsed() < DEADLINE,
                "{} of {tunnels} backend connections still held after {DEADLINE:?}: a client that does not read holds its backend\n{}",
                tunnels - freed.len(),
                router.log()
            ),
        }
    }
    let growth_mib = (rss_peak - rss_before) / 1024;
    let sent_mib: u64 = freed.iter().map(|(n, _)| n).sum::<u64>() >> 20;
    eprintln!(
        "{tunnels} stalled tunnels: router RSS {rss_before} kB before, {rss_peak} kB at peak; the backends pushed {sent_mib} MiB"
    );
    assert!(
        growth_mib < 32,
        "the router grew by {growth_mib} MiB for {tunnels} stalled tunnels (the backends pushed {sent_mib} MiB)"
    );
    // What each client sees: what was on its way, then a failed end, never a
    // clean one (the router cut the tunnel).
    let mut clients = never;
    for (f, stop, task) in slow {
        let _ = stop.send(());
        let (s, read) = task.await.unwrap();
        assert!(read > 0, "{}: the slow reader read nothing", name(f));
        clients.push((f, s));
    }
    for (f, mut s) in clients {
        let mut sink = Vec::new();
        let end = tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink))
            .await
            .unwrap_or_else(|_| panic!("{}: no end after the cut", name(f)));
        assert!(
            end.is_err(),
            "{}: a tunnel cut by the router ended cleanly after {} bytes",
            name(f),
            sink.len()
        );
    }
    let metrics = router.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "alpn_router_tunnels_ended_total{route=\"bulk\",reason=\"client_stalled\"}"
        ),
        Some(tunnels as u64),
        "{metrics}"
    );
    assert!(
        router
            .log()
            .contains("ended: client stalled: it took no byte for 2s"),
        "{}",
        router.log()
    );
    // Every descriptor comes back.
    let started = Instant::now();
    while descriptors(pid) > fds_before {
        assert!(
            started.elapsed() < DEADLINE,
            "the router holds {} descriptors, {fds_before} before the tunnels",
            descriptors(pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops every packet to and from `port` on this host while it lives (an
/// nftables table of its own), as if the peer on that port vanished.
struct Blackhole {
    table: String,
}

impl Blackhole {
    fn new(port: u16) -> Blackhole {
        let table = format!("alpn_faults_{port}");
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; }}\n\
             add rule inet {table} out tcp sport {port} drop\n\
             add rule inet {table} out tcp dport {port} drop\n"
        );
        nft(&script);
        Blackhole { table }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        nft(&format!("delete table inet {}\n", self.table));
    }
}

/// Runs an nftables script (`make setup` installs nft).
fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (make setup installs nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {script}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_without_a_fin_are_let_go_by_keepalive_and_user_timeout() {
    let pki = Pki::new();
    let (quiet_backend, quiet_ends) = watched_backend(false);
    let (ticking_backend, ticking_ends) = watched_backend(true);
    let routes = format!(
        "{}[[route]]\nalpn = \"ticks\"\nbackend = \"{ticking_backend}\"\n",
        route_to(quiet_backend)
    );
    // No idle timeout, a long send timeout: only TCP can tell the client is gone.
    let toml = config(&routes).replace(
        "[limits]\n",
        "[limits]\nclose_timeout = \"2s\"\nsend_timeout = \"10m\"\n\
         tcp_keepalive = { time = \"1s\", interval = \"1s\", probes = 2 }\n\
         tcp_user_timeout = \"3s\"\n",
    );
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    let mut vanished = Vec::new();
    for f in FRAMINGS {
        // A quiet tunnel (keepalive finds the client gone) and one the
        // backend keeps writing to (the unacknowledged bytes time out).
        for alpn in ["bulk", "ticks"] {
            let tcp = tokio::net::TcpStream::connect(addr_for(&router, f))
                .await
                .unwrap();
            let port = tcp.local_addr().unwrap().port();
            let (mut s, _) = tunnel_over(&pki, tcp, f, &[alpn], None).await.unwrap();
            s.write_all(b"up?").await.unwrap();
            let mut three = [0u8; 3];
            tokio::time::timeout(DEADLINE, s.read_exact(&mut three))
                .await
                .unwrap()
                .unwrap();
            assert!(&three == b"up?" || alpn == "ticks", "{}", name(f));
            vanished.push((f, alpn, Blackhole::new(port), s));
        }
    }
    // Both backends see their connections end.
    for (what, ends) in [("quiet", &quiet_ends), ("ticking", &ticking_ends)] {
        for i in 0..FRAMINGS.len() {
            ends.recv_timeout(DEADLINE).unwrap_or_else(|_| {
                panic!(
                    "{what} tunnels: {i} of {} backend connections let go within {DEADLINE:?} of the clients vanishing\n{}",
                    FRAMINGS.len(),
                    router.log()
                )
            });
        }
    }
    // Each tunnel's "ended" line follows its backend's close: wait for all.
    let started = Instant::now();
    loop {
        let log = router.log();
        let ended = log
            .lines()
            .filter(|l| l.contains("ended: client error") && l.contains("timed out"))
            .count();
        if ended == vanished.len() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{ended} of {} tunnels logged as ended by a timeout:\n{log}",
            vanished.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = router.get("/metrics");
    let by_client = ["bulk", "ticks"].map(|route| {
        metric(
            &metrics,
            &format!(
                "alpn_router_tunnels_ended_total{{route=\"{route}\",reason=\"client_error\"}}"
            ),
        )
    });
    assert_eq!(by_client, [Some(5), Some(5)], "{metrics}");
    drop(vanished);
}

/// A backend that writes `len` bytes to each connection as fast as it is let,
/// then closes; it reports what it sent and how its connection ended.
fn finite_backend(len: usize) -> (SocketAddr, Ends) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                let data = integration_tests::payload(len, 9);
                let end = match conn.write_all(&data) {
                    Ok(()) => "sent all".to_string(),
                    Err(e) => e.to_string(),
                };
                let _ = tx.send((len as u64, end));
            });
        }
    });
    (addr, rx)
}

/// A client that reads slowly but steadily (48 KiB every 250 ms, about
/// 190 KiB/s) is not "stalled": the send timeout is for a side that takes no
/// bytes. The router's socket towards it holds megabytes, and without a limit
/// on its unsent bytes it became writable again only once a third of them
/// had drained (seconds at this rate), so the router saw no progress for
/// longer than its send timeout and cut a tunnel that was moving (the
/// soak's `client_stalled` losses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_cut_at_the_send_timeout() {
    let pki = Pki::new();
    const LEN: usize = 4 << 20;
    let (backend, ends) = finite_backend(LEN);
    let toml = config(&route_to(backend)).replace(
        "[limits]\n",
        "[limits]\nsend_timeout = \"2s\"\nclose_timeout = \"2s\"\n",
    );
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    let (mut s, _) = tunnel(&pki, router.direct, None, &["bulk"], None)
        .await
        .unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 48 << 10];
    let started = Instant::now();
    let end = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut this_turn = 0;
        let r = loop {
            match tokio::time::timeout(DEADLINE, s.read(&mut chunk[this_turn..])).await {
                Ok(Ok(0)) => break Some(Ok(())),
                Ok(Ok(n)) => {
                    this_turn += n;
                    if this_turn == chunk.len() {
                        break None;
                    }
                }
                Ok(Err(e)) => break Some(Err(e.to_string())),
                Err(_) => break Some(Err("no byte within the deadline".into())),
            }
        };
        got += this_turn;
        if let Some(r) = r {
            break r;
        }
        assert!(started.elapsed() < 3 * DEADLINE, "{got} bytes so far");
    };
    assert_eq!(
        (got, end),
        (LEN, Ok(())),
        "the slow reader's tunnel ended early:\n{}",
        router.log()
    );
    let (_, how) = ends.recv_timeout(DEADLINE).unwrap();
    assert_eq!(how, "sent all");
}
