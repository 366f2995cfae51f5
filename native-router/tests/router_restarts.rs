//! The router process under faults while tunnels move data (every framing and
//! the direct port, each byte checked): stopped (SIGSTOP) and continued, 20
//! reloads, and a restart, with an `alpn-tunnel forward` running across it.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use alpn_protocol::framing::Framing;
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::load::Flow;
use support::{
    addr_for, backend, config, echo, echo_round_trip, name, tunnel, Listening, Logged, Pki,
    RouterProcess, DEADLINE, FRAMINGS,
};

fn routes(echo: SocketAddr) -> String {
    format!("[[route]]\nalpn = \"echo\"\nbackend = \"{echo}\"\n")
}

/// One flow per way of reaching the router, each shown to move data.
async fn flows(pki: &Pki, router: &impl Listening, seed: u64) -> Vec<Flow> {
    let mut flows = Vec::new();
    for (i, f) in FRAMINGS.into_iter().enumerate() {
        let (stream, _) = tunnel(pki, addr_for(router, f), f, &["echo"], None)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", name(f)));
        flows.push(Flow::start(name(f), stream, seed + i as u64));
    }
    for flow in &flows {
        flow.progress(256 << 10).await;
    }
    flows
}

/// A new tunnel through `f` carries 256 KiB both ways, checked.
async fn new_tunnel_works(pki: &Pki, router: &impl Listening, f: Option<Framing>, seed: u64) {
    let (stream, _) = tunnel(pki, addr_for(router, f), f, &["echo"], None)
        .await
        .unwrap_or_else(|e| panic!("a new tunnel via {}: {e}", name(f)));
    let sent = payload(256 << 10, seed);
    let back = echo_round_trip(stream, &sent)
        .await
        .unwrap_or_else(|e| panic!("a new tunnel via {}: {e}", name(f)));
    assert_eq!(
        back,
        (sent.len(), Sha1::digest(&sent).to_vec()),
        "a new tunnel via {}",
        name(f)
    );
}

/// The state letter of process `pid` (`T` when stopped).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_and_continued_router_loses_nothing() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let router = RouterProcess::start(pki.dir.path(), &config(&routes(echo_backend.addr)));
    let flows = flows(&pki, &router, 1).await;

    router.signal("STOP");
    let started = Instant::now();
    while state(router.pid()) != 'T' {
        assert!(started.elapsed() < DEADLINE, "the router is not stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    router.signal("CONT");

    for flow in &flows {
        flow.progress(1 << 20).await;
    }
    for flow in flows {
        let name = flow.name.clone();
        flow.finish().await.assert_complete(&name);
    }
    new_tunnel_works(&pki, &router, Some(Framing::AlpnPing), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let spare = backend(echo);
    let plain = config(&routes(echo_backend.addr));
    // Every reload changes something: a route comes and goes.
    let with_spare = config(&format!(
        "{}[[route]]\nalpn = \"spare\"\nbackend = \"{}\"\n",
        routes(echo_backend.addr),
        spare.addr
    ));
    let mut router = RouterProcess::start(pki.dir.path(), &plain);
    let flows = flows(&pki, &router, 10).await;

    for i in 0..20usize {
        router.rewrite(if i % 2 == 0 { &with_spare } else { &plain });
        router.signal("HUP");
        let started = Instant::now();
        while router.log().matches("reload: now serving routes").count() <= i {
            assert!(!router.log().contains("reload refused"), "{}", router.log());
            assert!(
                started.elapsed() < DEADLINE,
                "reload {i} not done:\n{}",
                router.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A new tunnel between reloads, in turn through each framing.
        new_tunnel_works(&pki, &router, FRAMINGS[i % FRAMINGS.len()], 100 + i as u64).await;
        for flow in &flows {
            assert!(!flow.ended(), "{} ended at reload {i}", flow.name);
        }
    }
    assert!(router
        .wait_for("reload: now serving routes")
        .contains("[\"echo\", \"spare\"]"));
    for flow in &flows {
        flow.progress(256 << 10).await;
    }
    for flow in flows {
        let name = flow.name.clone();
        flow.finish().await.assert_complete(&name);
    }
}

/// Connects to `local` (a `forward` listener), sends a line and returns what
/// came back before the connection ended, and whether it ended in time.
fn local_exchange(local: SocketAddr, data: &[u8]) -> (Vec<u8>, std::io::Result<()>) {
    let mut s = TcpStream::connect(local).expect("the forward's listener stays up");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(data);
    let mut back = Vec::new();
    let end = s.read_to_end(&mut back).map(|_| ());
    (back, end)
}

/// CPU ticks (user and system) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_drains_live_tunnels_and_forward_recovers() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let toml = config(&routes(echo_backend.addr)).replace(
        "drain_grace = \"10s\"",
        "drain_grace = \"6s\"\nclose_timeout = \"5s\"",
    );
    let mut first = RouterProcess::start(pki.dir.path(), &toml);
    // The restarted router listens where the first one did.
    let same_ports = toml
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", first.upgrade),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", first.direct),
            1,
        );
    assert!(same_ports.contains(&first.direct.to_string()));

    // A user's `alpn-tunnel forward` to the upgrade listener (plain HTTP, as
    // to an Envoy without TLS), running across the restart.
    let mut forward = integration_tests::tunnel_command();
    forward
        .args([
            "forward",
            "--server",
            &format!("http://{}", first.upgrade),
            "--alpn",
            "echo=127.0.0.1:0",
            "--sni",
            "router.test",
            "--timeout",
            "5s",
            "--upgrade",
            "websocket",
            "--ca",
        ])
        .arg(pki.path("router-ca.pem"));
    let mut forward = Logged::spawn(&mut forward);
    let local = forward.address_on_line(" for echo at ", "listening on ");
    let (back, end) = local_exchange_half_closed(local, b"before the restart");
    assert_eq!(
        (back.as_slice(), end.is_ok()),
        (&b"before the restart"[..], true)
    );

    // Tunnels under load when SIGTERM comes: the first two end while the
    // router drains, the others run on until the grace period is over.
    let flows = flows(&pki, &first, 20).await;
    first.signal("TERM");
    first.wait_for("shutting down: stopped accepting");
    let mut flows = flows.into_iter();
    let ending: Vec<Flow> = flows.by_ref().take(2).collect();
    let running: Vec<Flow> = flows.collect();
    for flow in ending {
        let name = flow.name.clone();
        if let Err(e) = flow.finish().await.complete() {
            panic!(
                "{name}, ended within the grace period: {e}\n{}",
                first.log()
            );
        }
    }
    for flow in &running {
        flow.progress(256 << 10).await;
    }
    for flow in running {
        let name = flow.name.clone();
        let outcome = flow.outcome().await;
        // The router ends them: every byte that came back is right, and the
        // end is the deliberate one (close_notify), not a cut.
        assert_eq!(outcome.wrong_at, None, "{name}: {outcome:?}");
        assert!(outcome.echoed > 0, "{name}: {outcome:?}");
        assert!(
            outcome.end.is_ok(),
            "{name}: closed at the end of the grace period, but not cleanly: {outcome:?}"
        );
    }
    let line = first.wait_for("at the end of the drain grace period (");
    assert!(line.contains("closed 3 tunnels"), "{line}");
    assert!(first.wait_exit(), "{}", first.log());

    // The router is down. Each local connection is closed promptly, with a
    // line saying why; the forward neither exits nor retries on its own.
    let ticks = cpu_ticks(forward.pid());
    for _ in 0..3 {
        let (back, _) = local_exchange(local, b"while it is down");
        assert!(back.is_empty(), "{back:?}");
    }
    let closed = |log: String| {
        log.lines()
            .filter(|l| l.contains("echo: local connection from 127.0.0.1:"))
            .filter(|l| l.contains(" closed: "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // The forward logs before it closes; the log is read a moment later.
    let mut refused = closed(forward.log());
    let waited = Instant::now();
    while refused.len() < 3 && waited.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        refused = closed(forward.log());
    }
    assert_eq!(refused.len(), 3, "{}", forward.log());
    assert!(
        refused
            .iter()
            .all(|l| l.contains("Connection refused") || l.contains("connection refused")),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(forward.pid()) - ticks;
    assert!(
        spent < 50,
        "the forward used {spent} ticks of CPU while the router was down"
    );

    let second = RouterProcess::start(pki.dir.path(), &same_ports);
    assert_eq!(second.upgrade, first.upgrade);
    // New local connections work again, the forward untouched.
    let sent = payload(1 << 20, 30);
    let (back, end) = local_exchange_half_closed(local, &sent);
    end.unwrap();
    assert!(back == sent, "after the restart: the echo differs");
    new_tunnel_works(&pki, &second, None, 31).await;
}

/// As [`local_exchange`], with the sending side half-closed after `data`
/// (the echo backend ends at EOF), writing and reading at once.
fn local_exchange_half_closed(local: SocketAddr, data: &[u8]) -> (Vec<u8>, std::io::Result<()>) {
    let mut s = TcpStream::connect(local).expect("the forward's listener stays up");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let data = data.to_vec();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&data);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut back = Vec::new();
    let end = s.read_to_end(&mut back).map(|_| ());
    sending.join().unwrap();
    (back, end)
}
