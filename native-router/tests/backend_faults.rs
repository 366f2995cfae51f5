//! Faults on the backend's edge of the router, as the client sees them through
//! the upgrade listener in every framing and through the direct listener: a
//! backend that resets in the middle of a transfer, one that takes no byte
//! (cut at `send_timeout`), one that refuses, one that never accepts (a full
//! backlog), one that reads slowly while a client pushes
//! 1 GiB (the real router process: its memory stays flat and the backpressure
//! reaches the client; then it speeds up and every byte arrives), and one that
//! closes one half. (`closing.rs` holds the reset after a complete answer and
//! the quiet half-closed tunnel on the direct port.)

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use alpn_protocol::framing::Framing;
use sha2::{Digest, Sha256};
use support::{addr_for, backend, config, name, tunnel, InProcessRouter, Pki, RouterProcess};
use support::{DEADLINE, FRAMINGS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// What the resetting backend echoes before it resets.
const BEFORE_RESET: usize = 100 * 1024;

/// Echoes the first [`BEFORE_RESET`] bytes, then resets (SO_LINGER 0) while
/// the client is still sending.
fn echo_then_reset(mut conn: TcpStream, _: &Mutex<Vec<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    let mut echoed = 0;
    while echoed < BEFORE_RESET {
        let want = buf.len().min(BEFORE_RESET - echoed);
        match conn.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
                echoed += n;
            }
        }
    }
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

fn route(alpn: &str, addr: SocketAddr) -> String {
    format!("[[route]]\nalpn = \"{alpn}\"\nbackend = \"{addr}\"\n")
}

/// The value of the metric line starting with `series` (`name{labels}`).
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The end a client must see when the router cut its tunnel (no
/// `close_notify`; over WebSocket the Close 1011 says so first).
fn assert_cut(f: Option<Framing>, end: std::io::Result<()>, got: usize) {
    let e = end.expect_err(&format!(
        "via {}: the client saw a clean end after {got} bytes",
        name(f)
    ));
    let expected = match f {
        Some(Framing::WebSocket(_)) => (
            std::io::ErrorKind::ConnectionAborted,
            "the server closed the tunnel with WebSocket code 1011",
        ),
        _ => (std::io::ErrorKind::UnexpectedEof, "close_notify"),
    };
    assert!(
        e.kind() == expected.0 && e.to_string().contains(expected.1),
        "via {}: {e}",
        name(f)
    );
}

/// Reads `stream` to its end; the bytes and how it ended.
async fn read_all(stream: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_mid_stream_is_a_prompt_visible_truncation_in_every_framing() {
    let pki = Pki::new();
    let resetting = backend(echo_then_reset);
    let router = InProcessRouter::start(pki.dir.path(), &config(&route("bulk", resetting.addr)));
    let data = integration_tests::payload(4 << 20, 21);
    for f in FRAMINGS {
        let (s, _) = tunnel(&pki, addr_for(&router, f), f, &["bulk"], None)
            .await
            .unwrap();
        let (mut rd, mut wr) = tokio::io::split(s);
        // The client sends on (its writes may fail once the tunnel is cut)
        // and reads, in one task, until the end comes.
        let send = async {
            let _ = wr.write_all(&data).await;
            std::future::pending::<()>().await
        };
        let (got, end) = timeout(DEADLINE, async {
            tokio::select! {
                r = read_all(&mut rd) => r,
                _ = send => unreachable!(),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("via {}: no end within {DEADLINE:?}", name(f)));
        // What reached the router before the reset arrives, then the cut.
        // (Not always all of it: the reset throws away what the backend's
        // kernel had not sent yet.)
        assert!(
            !got.is_empty() && got.len() <= BEFORE_RESET && data.starts_with(&got),
            "via {}: {} bytes came back, not a part of the {BEFORE_RESET} the backend echoed before its reset",
            name(f),
            got.len()
        );
        assert_cut(f, end, got.len());
    }
    // The log says why, and the metrics count it.
    let log = router.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("ended: backend error") && l.contains("reset"))
        .count();
    assert_eq!(lines, FRAMINGS.len(), "{log}");
    let metrics = router.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "alpn_router_tunnels_ended_total{route=\"bulk\",reason=\"backend_error\"}"
        ),
        Some(FRAMINGS.len() as u64),
        "{metrics}"
    );
}

/// Accepts and never reads (a stuck backend), holding the connection.
fn never_reading(conn: TcpStream, _: &Mutex<Vec<Vec<u8>>>) {
    thread::sleep(DEADLINE);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_takes_no_byte_is_cut_off_at_the_send_timeout() {
    let pki = Pki::new();
    let stuck = backend(never_reading);
    let toml = config(&route("stuck", stuck.addr))
        .replace("[limits]\n", "[limits]\nsend_timeout = \"2s\"\n");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    let mut clients = Vec::new();
    for f in FRAMINGS {
        let (s, _) = tunnel(&pki, addr_for(&router, f), f, &["stuck"], None)
            .await
            .unwrap();
        // The client pushes until it cannot, and reads until the end comes.
        clients.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(s);
            let send = async {
                let chunk = vec![9u8; 64 * 1024];
                while wr.write_all(&chunk).await.is_ok() {}
                std::future::pending::<()>().await
            };
            let ended = timeout(DEADLINE, async {
                tokio::select! {
                    r = read_all(&mut rd) => r,
                    _ = send => unreachable!(),
                }
            })
            .await;
            (f, ended)
        }));
    }
    for client in clients {
        let (f, ended) = client.await.unwrap();
        let (got, end) = ended.unwrap_or_else(|_| panic!("via {}: no end", name(f)));
        assert_cut(f, end, got.len());
    }
    let log = router.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("ended: backend stalled: it took no byte for 2s"))
        .count();
    assert_eq!(lines, FRAMINGS.len(), "{log}");
    let metrics = router.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "alpn_router_tunnels_ended_total{route=\"stuck\",reason=\"backend_stalled\"}"
        ),
        Some(FRAMINGS.len() as u64),
        "{metrics}"
    );
}

/// A listener whose backlog is full and that never accepts: connections to it
/// get no answer (the kernel drops their SYN). The fillers are returned, to
/// be held.
fn never_accepting() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the backlog until a connection gets no answer.
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    (addr, listener, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_or_never_accepts_ends_the_tunnel_visibly_at_connect_timeout() {
    let pki = Pki::new();
    let (silent, _listener, _fillers) = never_accepting();
    // A port nothing listens on: the backend refuses.
    let refusing = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = format!("{}{}", route("silent", silent), route("refusing", refusing));
    let toml = config(&routes).replace("connect_timeout = \"2s\"", "connect_timeout = \"1s\"");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    for alpn in ["silent", "refusing"] {
        for f in FRAMINGS {
            let (mut s, _) = tunnel(&pki, addr_for(&router, f), f, &[alpn], None)
                .await
                .unwrap();
            let started = Instant::now();
            let (got, end) = timeout(DEADLINE, read_all(&mut s))
                .await
                .unwrap_or_else(|_| panic!("{alpn} via {}: no end within {DEADLINE:?}", name(f)));
            assert_cut(f, end, got.len());
            if alpn == "silent" {
                // Not before the connect timeout: the router did wait for it.
                assert!(
                    started.elapsed() >= Duration::from_secs(1),
                    "via {}: the end came before connect_timeout",
                    name(f)
                );
            }
        }
    }
    let log = router.log();
    let unreachable = |what: &str| {
        log.lines()
            .filter(|l| l.contains("backend unreachable") && l.contains(what))
            .count()
    };
    assert_eq!(
        unreachable(&format!("connecting to {silent} timed out after 1s")),
        FRAMINGS.len(),
        "{log}"
    );
    assert_eq!(unreachable("Connection refused"), FRAMINGS.len(), "{log}");
    let metrics = router.get("/metrics");
    for alpn in ["silent", "refusing"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("alpn_router_backend_failures_total{{route=\"{alpn}\"}}")
            ),
            Some(FRAMINGS.len() as u64),
            "{metrics}"
        );
    }
}

/// Sends a banner, closes its write side, then reads to EOF and records the
/// SHA-256 of what came; then closes.
fn banner_half_close_then_read(mut conn: TcpStream, seen: &Mutex<Vec<Vec<u8>>>) {
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    if conn.write_all(b"banner").is_err() {
        return;
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut hash = Sha256::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hash.update(&buf[..n]),
            Err(_) => return,
        }
    }
    seen.lock().unwrap().push(hash.finalize().to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_one_half_still_gets_what_the_client_sends() {
    let pki = Pki::new();
    let half = backend(banner_half_close_then_read);
    let toml = config(&route("half", half.addr))
        .replace("[limits]\n", "[limits]\nhalf_closed_timeout = \"3s\"\n");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    let data = integration_tests::payload(1 << 20, 22);
    // Every framing: the backend's EOF is the inner TLS close_notify (over
    // WebSocket too, where only a Close would end both directions).
    let half_closing = FRAMINGS;
    for f in half_closing {
        let (s, _) = tunnel(&pki, addr_for(&router, f), f, &["half"], None)
            .await
            .unwrap();
        let (mut rd, mut wr) = tokio::io::split(s);
        // EOF on the client's read side, a clean one.
        let (got, end) = timeout(DEADLINE, read_all(&mut rd)).await.unwrap();
        assert_eq!(
            (got.as_slice(), end.ok()),
            (&b"banner"[..], Some(())),
            "via {}",
            name(f)
        );
        // The client still sends, then closes its half: the tunnel ends.
        timeout(DEADLINE, async {
            wr.write_all(&data).await?;
            wr.shutdown().await
        })
        .await
        .unwrap()
        .unwrap();
    }
    router.wait_for("ended: both sides closed");
    let started = Instant::now();
    while half.seen.lock().unwrap().len() < half_closing.len() {
        assert!(started.elapsed() < DEADLINE, "{}", router.log());
        thread::sleep(Duration::from_millis(20));
    }
    let expected = Sha256::digest(&data).to_vec();
    for hash in half.seen.lock().unwrap().iter() {
        assert_eq!(hash, &expected, "what a backend connection got");
    }
    // A client that reads the EOF and then neither sends nor closes is let go
    // after half_closed_timeout.
    let (mut s, _) = tunnel(&pki, router.direct, None, &["half"], None)
        .await
        .unwrap();
    let (got, end) = timeout(DEADLINE, read_all(&mut s)).await.unwrap();
    assert_eq!((got.as_slice(), end.ok()), (&b"banner"[..], Some(())));
    router.wait_for("ended: half-closed and quiet for 3s");
    let metrics = router.get("/metrics");
    let ended = |reason: &str| {
        metric(
            &metrics,
            &format!("alpn_router_tunnels_ended_total{{route=\"half\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        (ended("closed"), ended("half_closed")),
        (Some(half_closing.len() as u64), Some(1)),
        "{metrics}"
    );
}

/// How much the client pushes through a slow backend (see the test).
const PUSH: u64 = 1 << 30;
/// How long the backend reads slowly.
const SLOW_PHASE: Duration = Duration::from_secs(3);

/// The pushed bytes: 1 MiB blocks of `payload`, each stamped with its index
/// so that a lost, doubled or reordered block changes the hash.
fn block(i: u64, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

/// The resident memory of `pid` in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_holds_back_the_client_and_the_routers_memory_stays_flat() {
    let pki = Pki::new();
    // The backend reads 16 KiB every 50 ms until told to speed up, hashing
    // everything; then it reports the count and the hash.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fast = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (done, result) = mpsc::channel();
    {
        let (fast, received) = (fast.clone(), received.clone());
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let slow = !fast.load(Ordering::Relaxed);
                let want = if slow { 16 * 1024 } else { buf.len() };
                match conn.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => {
                        hash.update(&buf[..n]);
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.to_string()));
                        return;
                    }
                }
                if slow {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = done.send(Ok((
                received.load(Ordering::Relaxed),
                hash.finalize().to_vec(),
            )));
        });
    }
    let router = RouterProcess::start(pki.dir.path(), &config(&route("bulk", addr)));
    let pid = router.pid();
    // Through the direct port: the same pipe as every framing, and the
    // fastest way to 1 GiB in a debug build (12 s here, against 26 s over
    // WebSocket, whose masking is unoptimised code in debug builds).
    let (s, _) = tunnel(&pki, router.direct, None, &["bulk"], None)
        .await
        .unwrap();
    let rss_before = rss_kb(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let base = integration_tests::payload(1 << 20, 23);
    let push = {
        let sent = sent.clone();
        async move {
            let (mut rd, mut wr) = tokio::io::split(s);
            let mut hash = Sha256::new();
            let write = async {
                for i in 0..PUSH >> 20 {
                    let b = block(i, &base);
                    wr.write_all(&b).await?;
                    hash.update(&b);
                    sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                wr.shutdown().await?;
                Ok::<_, std::io::Error>(())
            };
            let read = read_all(&mut rd);
            let (written, (got, end)) = tokio::join!(write, read);
            written?;
            end?;
            assert!(got.is_empty(), "the backend sent nothing");
            Ok::<_, std::io::Error>(hash.finalize().to_vec())
        }
    };
    let push = tokio::spawn(push);
    // The slow phase: the router's memory is sampled, and what the client has
    // sent stays within the buffers between it and the backend.
    let started = Instant::now();
    let mut rss_peak = rss_before;
    while started.elapsed() < SLOW_PHASE {
        rss_peak = rss_peak.max(rss_kb(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (held_sent, held_received) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    fast.store(true, Ordering::Relaxed);
    while !push.is_finished() {
        rss_peak = rss_peak.max(rss_kb(pid));
        assert!(
            started.elapsed() < DEADLINE * 6,
            "{} of {PUSH} bytes pushed after {:?}",
            sent.load(Ordering::Relaxed),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pushed = push.await.unwrap().expect("the push ends cleanly");
    let (count, hash) = result
        .recv_timeout(DEADLINE)
        .unwrap()
        .expect("the backend reads to EOF");
    eprintln!(
        "slow phase: the client had sent {} MiB, the backend read {} MiB; router RSS {rss_before} kB before, {rss_peak} kB at peak; {PUSH} bytes in {:?}",
        held_sent >> 20,
        held_received >> 20,
        started.elapsed()
    );
    assert_eq!((count, hash), (PUSH, pushed), "everything arrives intact");
    // Backpressure reached the client: it could not run ahead of the slow
    // backend by more than the buffers on the way (the sockets' and a few
    // records in the router).
    assert!(
        held_sent - held_received < 64 << 20,
        "while the backend read slowly the client sent {} MiB and the backend read {} MiB",
        held_sent >> 20,
        held_received >> 20
    );
    assert!(
        rss_peak - rss_before < 32 * 1024,
        "the router grew from {rss_before} kB to {rss_peak} kB"
    );
    let metrics = router.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "alpn_router_bytes_total{route=\"bulk\",direction=\"to_backend\"}"
        ),
        Some(PUSH),
        "{metrics}"
    );
}
