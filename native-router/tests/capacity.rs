//! Capacity under attack: a full cap is answered at once and reported by
//! `/readyz`; one client address cannot take every place; the metrics listener
//! has its own cap and a whole-request deadline, so it cannot take the
//! descriptors the data path needs; the descriptor limit is raised at start and
//! a cap that cannot fit is reported; out of descriptors, a connection is
//! turned away at once (never left in the backlog), without a busy loop, and
//! the router serves again once descriptors free up.

mod support;

use alpn_protocol::handshake;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel as client;
use alpn_tunnel::tls::client_config;
use support::{
    backend, config, echo, http_get, tunnel, InProcessRouter, Pki, RouterProcess, DEADLINE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

fn routes(addr: SocketAddr) -> String {
    format!("[[route]]\nalpn = \"redis\"\nbackend = \"{addr}\"\n")
}

/// Sends an upgrade request (as Envoy would, naming `client` when given) and
/// returns the answer (a 101's head, or a refusal read until the router
/// closes) and the connection, still open after a 101.
fn raw_upgrade(addr: SocketAddr, client: Option<&str>) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let (request, _) = handshake::client_request(
        Framing::AlpnPing,
        "router.test",
        "/connectionupgrade",
        &alpn_protocol::names::Names::default(),
    );
    let request = match client {
        Some(c) => request.replacen(
            "\r\n\r\n",
            &format!("\r\nX-Alpn-Client-Addr: {c}\r\n\r\n"),
            1,
        ),
        None => request,
    };
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the head and body, or the close.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no answer: {e} (got {:?})",
                String::from_utf8_lossy(&answer)
            ),
        }
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
            break;
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), s)
}

/// Polls `/readyz` until its answer contains `want`.
fn wait_readyz(router: &InProcessRouter, want: &str) -> String {
    let started = Instant::now();
    loop {
        let got = router.get("/readyz");
        if got.contains(want) {
            return got;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "/readyz never said {want:?}: {got}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cap_is_answered_at_once_and_readyz_reports_it() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let toml =
        config(&routes(echo_backend.addr)).replace("[limits]\n", "[limits]\nmax_connections = 2\n");
    let router = InProcessRouter::start(pki.dir.path(), &toml);
    assert!(router.get("/readyz").starts_with("HTTP/1.1 200"));
    let (first, _) = tunnel(&pki, router.direct, None, &["redis"], None)
        .await
        .unwrap();
    let (_second, _) = tunnel(
        &pki,
        router.upgrade,
        Some(Framing::AlpnPing),
        &["redis"],
        None,
    )
    .await
    .unwrap();

    let (answer, _) = raw_upgrade(router.upgrade, None);
    assert!(
        answer.starts_with("HTTP/1.1 503 ") && answer.contains("connection cap (2 connections)"),
        "{answer}"
    );
    let direct = timeout(
        DEADLINE,
        tunnel(&pki, router.direct, None, &["redis"], None),
    )
    .await
    .expect("the direct port answers at once (a close), never a hang");
    assert!(direct.is_err(), "no place: the direct connection is closed");
    let ready = router.get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503 ") && ready.contains("at capacity"),
        "{ready}"
    );
    let metrics = router.get("/metrics");
    assert!(
        metrics.contains(
            "alpn_router_connections_turned_away_total{listener=\"upgrade\",reason=\"cap_full\"} 1"
        ) && metrics.contains(
            "alpn_router_connections_turned_away_total{listener=\"direct\",reason=\"cap_full\"} 1"
        ),
        "{metrics}"
    );

    drop(first);
    wait_readyz(&router, "ready");
    let (_, alpn) = tunnel(&pki, router.direct, None, &["redis"], None)
        .await
        .unwrap();
    assert_eq!(
        alpn.as_deref(),
        Some("redis"),
        "a place given back is used again"
    );
}

/// A direct tunnel from `from` (a loopback address of the test's choosing),
/// shown to carry bytes.
async fn direct_from(
    pki: &Pki,
    router: &InProcessRouter,
    from: &str,
) -> std::io::Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    let tcp = socket.connect(router.direct).await?;
    let config = client_config(std::slice::from_ref(&pki.server_ca), &["redis"], None).unwrap();
    let mut tls = client::inner_tls(tcp, config, "router.test").await?;
    // A refusal after the handshake would show here.
    tls.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    timeout(DEADLINE, tls.read_exact(&mut back))
        .await
        .map_err(std::io::Error::other)??;
    assert_eq!(&back, b"ping");
    Ok(tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_place() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let toml = config(&routes(echo_backend.addr))
        .replace("[limits]\n", "[limits]\nmax_connections_per_client = 1\n");
    let router = InProcessRouter::start(pki.dir.path(), &toml);

    // Direct: the TCP peer is the client.
    let _held = direct_from(&pki, &router, "127.0.0.3").await.unwrap();
    let again = timeout(DEADLINE, direct_from(&pki, &router, "127.0.0.3"))
        .await
        .expect("refused at once");
    assert!(again.is_err(), "a second place for 127.0.0.3");
    direct_from(&pki, &router, "127.0.0.4")
        .await
        .expect("another address still gets in");

    // Behind a trusted peer (Envoy): the client it names is held to the limit.
    let (held, _open) = raw_upgrade(router.upgrade, Some("192.0.2.7"));
    assert!(held.starts_with("HTTP/1.1 101 "), "{held}");
    let (refused, _) = raw_upgrade(router.upgrade, Some("192.0.2.7"));
    assert!(
        refused.starts_with("HTTP/1.1 429 ")
            && refused.contains("too many connections from 192.0.2.7: at most 1 at once"),
        "{refused}"
    );
    let (other, _) = raw_upgrade(router.upgrade, Some("192.0.2.8"));
    assert!(other.starts_with("HTTP/1.1 101 "), "{other}");
}

/// Opens `n` connections to `addr` that send one byte of a request and then
/// one more every 500 ms, as a slow-loris attacker would; returns them.
fn slow_loris(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"G");
            held.push(s);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_cannot_starve_the_data_path() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    // The metrics listener's defaults: 16 requests at once, 5 s for each.
    let toml = config(&routes(echo_backend.addr))
        .replace("[limits]\n", "[limits]\nmax_connections = 20\n");
    // 128 descriptors: 300 scrape connections would take them all. The
    // binary, so that the limit is the router's own.
    let router = RouterProcess::start_limited(pki.dir.path(), &toml, Some("-n 128"));
    let metrics = router.metrics;
    let mut attack = tokio::task::spawn_blocking(move || slow_loris(metrics, 300));
    let held = timeout(DEADLINE, &mut attack).await.unwrap().unwrap();
    assert!(held.len() > 200, "the attack could not even connect");

    // The data path works through the attack, on both listeners.
    for framing in [None, Some(Framing::WebSocket(Subprotocol::AlpnPing))] {
        let addr = if framing.is_some() {
            router.upgrade
        } else {
            router.direct
        };
        let (mut s, alpn) = timeout(DEADLINE, tunnel(&pki, addr, framing, &["redis"], None))
            .await
            .expect("a tunnel during the attack")
            .expect("a tunnel during the attack");
        assert_eq!(alpn.as_deref(), Some("redis"));
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
    }

    // Every slow connection is cut: past the cap at once, the rest at the
    // whole-request deadline, however steadily they dribble.
    let cut = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut open = held;
        while !open.is_empty() && started.elapsed() < DEADLINE {
            open.retain_mut(|s| {
                let _ = s.set_nonblocking(true);
                let mut b = [0u8; 64];
                let alive = match s.read(&mut b) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                };
                alive && s.write_all(b"E").is_ok()
            });
            std::thread::sleep(Duration::from_millis(500));
        }
        open.len()
    });
    assert_eq!(cut.await.unwrap(), 0, "slow scrape connections still open");
    assert!(router.get("/healthz").starts_with("HTTP/1.1 200"));
}

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_and_a_cap_that_cannot_fit_is_reported() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let toml = config(&routes(echo_backend.addr));

    // A low soft limit under a higher hard one (systemd's 1,024 / 524,288).
    let mut raised = RouterProcess::start_limited(pki.dir.path(), &toml, Some("-Sn 256"));
    let (soft, hard) = open_files_limit(raised.pid());
    assert!(hard > 256 && soft == hard, "soft {soft}, hard {hard}");
    raised.wait_for("file descriptor limit");
    drop(raised);

    // A hard limit too low for the default cap of 10,000: said at start and by check.
    let mut low = RouterProcess::start_limited(pki.dir.path(), &toml, Some("-n 256"));
    let line = low.wait_for("needs about");
    assert!(
        line.contains("limits.max_connections = 10000") && line.contains("may open 256"),
        "{line}"
    );
    let out = support::router_command(Some("-n 256"))
        .args(["check", "--config"])
        .arg(pki.path("router.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("warning: limits.max_connections = 10000 needs about"),
        "{stdout}"
    );
    let _ = http_get(low.metrics, "/healthz").unwrap();
}

/// CPU ticks (user and system) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Open file descriptors of process `pid`.
fn descriptors(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// A direct tunnel shown to carry bytes.
async fn echo_tunnel(
    pki: &Pki,
    direct: SocketAddr,
) -> std::io::Result<Box<dyn alpn_protocol::framing::Io>> {
    let (mut s, _) = tunnel(pki, direct, None, &["redis"], None).await?;
    s.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await?;
    Ok(s)
}

// A tunnel takes two descriptors, so whether the last one free goes to an
// accept or to a dial depends on the parity of the limit (and of what the
// router inherited): both are run. With one free, a tunnel's accept left the
// router at the limit, and accept(2) failed (EMFILE) with no connection
// waiting; the spare was let go for nothing and its descriptor taken by that
// tunnel's dial, so the next client waited in the backlog with no spare to
// turn it away (found by CI, where make's jobserver descriptors are inherited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_refusals_are_prompt_and_clear_and_the_router_recovers() {
    out_of_descriptors(64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_with_an_odd_limit() {
    out_of_descriptors(65).await;
}

async fn out_of_descriptors(limit: u64) {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    // The default cap (10,000) cannot fit in the limit: the router runs out of
    // descriptors long before its cap is full, as a router whose limit is
    // shared with something else would.
    let toml = config(&routes(echo_backend.addr));
    let ulimit = format!("-n {limit}");
    let mut router = RouterProcess::start_limited(pki.dir.path(), &toml, Some(&ulimit));
    router.wait_for("needs about");
    router.wait_for("metrics listener on");
    // Listeners, the spare, the runtime's own and what was inherited.
    let base = descriptors(router.pid());

    // Tunnels until the descriptors are gone: the last ones may be refused
    // at accept or fail at the dial to the backend.
    let mut held = Vec::new();
    loop {
        let opened = timeout(DEADLINE, echo_tunnel(&pki, router.direct))
            .await
            .expect("a tunnel or a refusal, promptly, never a hang");
        match opened {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
        assert!(
            (held.len() as u64) < limit,
            "{limit} descriptors held {} tunnels",
            held.len()
        );
    }
    assert!(held.len() > 5, "only {} tunnels", held.len());
    // The last tunnel may have failed at the dial to its backend: the router
    // lets its descriptor go only at the end of a lingering close, after the
    // client has seen the failure. Until then one more descriptor is in use
    // than the held tunnels take, and one frees up later: settled first, so
    // that what follows starts from a fixed count.
    let settled = base + 2 * held.len() as u64;
    let started = Instant::now();
    while descriptors(router.pid()) != settled {
        assert!(
            started.elapsed() < DEADLINE,
            "{} descriptors open, {settled} expected ({base} at the start, {} tunnels held):\n{}",
            descriptors(router.pid()),
            held.len(),
            router.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A descriptor or two may be left, too few for a tunnel (the dial to
    // the backend needs one more): upgrades that wait for their tunnel take
    // them, until one is refused.
    let upgrade = router.upgrade;
    let (mut waiting, first) = tokio::task::spawn_blocking(move || {
        let mut waiting = Vec::new();
        loop {
            let (answer, s) = raw_upgrade(upgrade, None);
            if !answer.starts_with("HTTP/1.1 101 ") || waiting.len() == 10 {
                return (waiting, answer);
            }
            waiting.push(s);
        }
    })
    .await
    .unwrap();
    assert!(
        waiting.len() < 10,
        "ten upgrades took no descriptor ({} open):\n{}",
        descriptors(router.pid()),
        router.log()
    );

    // At the limit: an upgrade is answered at once with a reason, a direct
    // connection is closed at once (TLS has no way to say why).
    let ticks = cpu_ticks(router.pid());
    let mut answers = tokio::task::spawn_blocking(move || {
        (0..19)
            .map(|_| raw_upgrade(upgrade, None).0)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    answers.insert(0, first);
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            answer.starts_with("HTTP/1.1 503 ") && answer.contains("out of file descriptors"),
            "answer {i} of 20 at the limit ({} upgrades waiting, {} tunnels held, {} descriptors open):\n{answer}\nthe router's log:\n{}",
            waiting.len(),
            held.len(),
            descriptors(router.pid()),
            router.log()
        );
    }
    // Refused at accept (a close during the handshake) or, if a refusal
    // above has just given its descriptor back, at the dial to the backend
    // (a truncation): an error either way.
    let direct = timeout(DEADLINE, echo_tunnel(&pki, router.direct))
        .await
        .expect("the direct port answers at once, never a hang");
    assert!(direct.is_err(), "a direct tunnel with no descriptor left");
    // Pending connections, nobody to serve them: the accept loop must wait,
    // not spin on EMFILE.
    waiting.extend((0..5).map(|_| TcpStream::connect(router.direct).unwrap()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(router.pid()) - ticks;
    assert!(
        spent < 100,
        "the router used {spent} ticks of CPU at the descriptor limit"
    );
    let line = router.wait_for("out of file descriptors");
    assert!(
        line.contains("direct") || line.contains("upgrade"),
        "{line}"
    );
    let log = router.log();
    let lines = log
        .lines()
        .filter(|l| !l.contains(" DEBUG "))
        .filter(|l| l.contains("out of file descriptors") || l.contains("accept failed"))
        .count();
    assert!(
        lines <= 20,
        "{lines} lines for 26 connections refused at the limit:\n{log}"
    );
    drop(waiting);

    // Descriptors free up: the router serves again.
    let before = descriptors(router.pid());
    drop(held);
    let started = Instant::now();
    while descriptors(router.pid()) + 10 > before {
        assert!(
            started.elapsed() < DEADLINE,
            "the tunnels' descriptors stay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in [None, Some(Framing::WebSocket(Subprotocol::AlpnPing))] {
        let addr = if f.is_some() {
            router.upgrade
        } else {
            router.direct
        };
        let (mut s, alpn) = tunnel(&pki, addr, f, &["redis"], None)
            .await
            .expect("a tunnel once descriptors are free");
        assert_eq!(alpn.as_deref(), Some("redis"));
        s.write_all(b"again").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"again");
    } // Counted, once the metrics listener has a descriptor to answer with.
    let metrics = router.get("/metrics");
    assert!(
        metrics.contains(
            "alpn_router_connections_turned_away_total{listener=\"upgrade\",reason=\"no_descriptors\"} 20"
        ),
        "{metrics}"
    );
}
