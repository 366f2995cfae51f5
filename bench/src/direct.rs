//! The router's direct TLS port against the other TLS terminators (nginx
//! `stream`, HAProxy, Envoy `tcp_proxy`) in front of the same echo backend:
//! bulk data path, memory per idle tunnel, and scaling (handshakes are in
//! [`crate::handshakes`]).

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::measure::{self, median};
use crate::peers::{self, Peer};
use crate::report::{Row, Scenario, Target, BEST_PEER};
use crate::Settings;

/// The most idle tunnels that fit: each holds two descriptors in the router
/// (client and backend), whose hard limit here is 20,000 and cannot be raised.
pub const MANY_IDLE: usize = 9_900;

/// Scenario 1: one tunnel, and 64 in parallel, with the server's CPU per GiB
/// at 64.
pub async fn data_path(settings: &Settings, backend: SocketAddr) -> anyhow::Result<[Scenario; 3]> {
    // Every peer runs at once and they take turns, round after round, so that
    // a change in the machine's load hurts them alike (only one is ever busy).
    let (subjects, paired) = peers::subjects(&Peer::ALL, settings);
    let running: Vec<_> = subjects.iter().map(|s| peers::start(s, backend)).collect();
    let n = running.len();
    let (mut one, mut many, mut many_cpu) = (
        vec![Vec::new(); n],
        vec![Vec::new(); n],
        vec![Vec::new(); n],
    );
    // Bulk figures are the median of three rounds (one in the smoke test).
    for round in 0..settings.size(3, 1) {
        eprintln!("measuring the data path, round {} ...", round + 1);
        for i in crate::turns(n, round, &paired) {
            let peer = &running[i];
            one[i].push(
                measure::throughput(&peer.target, settings.size(512 << 20, 2 << 20), 1).await?,
            );
            // The server's CPU over the transfer alone (not the 64 handshakes):
            // a figure the machine's other load moves much less than a rate.
            let each = settings.size(8 << 20, 64 << 10);
            let conns = measure::connect_all(&peer.target, 64).await?;
            let before = peer.pid().map(measure::tree_cpu_secs);
            let secs = measure::transfer(conns, each).await?;
            many[i].push(measure::mib_per_s(each * 64, secs));
            if let (Some(pid), Some(before)) = (peer.pid(), before) {
                let gib = (each * 64) as f64 / f64::from(1 << 30);
                many_cpu[i].push((measure::tree_cpu_secs(pid) - before) / gib);
            }
        }
    }
    let row = |i: usize, values: &[f64]| Row::median_of(&running[i].name, values.to_vec());
    let data_one: Vec<Row> = (0..n).map(|i| row(i, &one[i])).collect();
    let data_many: Vec<Row> = (0..n).map(|i| row(i, &many[i])).collect();
    let cpu_many: Vec<Row> = (0..n)
        .filter(|&i| !many_cpu[i].is_empty())
        .map(|i| row(i, &many_cpu[i]))
        .collect();
    let ahead = || {
        Some(Target::new(
            &[Peer::Router.name()],
            1.05,
            "at least 1.05x the best peer",
        ))
    };
    Ok([
        Scenario {
            id: "data-path-1",
            title: "Router data path, direct TLS, one tunnel",
            unit: "MiB/s each way",
            higher_is_better: true,
            baseline: BEST_PEER,
            target: ahead(),
            method: "One TLS 1.3 connection (ECDSA P-256) to each terminator, which proxies to the same echo backend; \
                     512 MiB sent while the echo is read back at the same time, from one client task. All terminators run \
                     at once and take turns; the median of three rounds.".into(),
            rows: data_one,
        },
        Scenario {
            id: "data-path-64",
            title: "Router data path, direct TLS, 64 tunnels in parallel",
            unit: "MiB/s each way, all tunnels",
            higher_is_better: true,
            baseline: BEST_PEER,
            target: ahead(),
            method: "64 TLS connections at once, 8 MiB each way each; in the same rounds as the one-tunnel figure, \
                     the median of three.".into(),
            rows: data_many,
        },
        Scenario {
            id: "data-path-64-cpu",
            title: "Server CPU per GiB, direct TLS, 64 tunnels in parallel",
            unit: "CPU seconds per GiB each way",
            higher_is_better: false,
            baseline: Peer::NginxStream.name(),
            target: None,
            method: "The 64-tunnel transfers above: each server's CPU time (user + system, all its processes and \
                     threads, from /proc) from the moment the 64 tunnels are open to the end of the transfer, per GiB \
                     carried each way; the median of three. It moves much less with the machine's other load than a \
                     rate does.".into(),
            rows: cpu_many,
        },
    ])
}

/// Scenario 5: the server's memory per idle tunnel at 1,000 tunnels and at
/// [`MANY_IDLE`], each on a freshly started server.
pub async fn memory(settings: &Settings, backend: SocketAddr) -> anyhow::Result<[Scenario; 2]> {
    let mut scenarios = Vec::new();
    for (id, title, count) in [
        (
            "memory-1k",
            "Memory per idle tunnel, 1,000 tunnels",
            settings.size(1000, 16),
        ),
        (
            "memory-10k",
            "Memory per idle tunnel, 10,000 tunnels (9,900)",
            settings.size(MANY_IDLE, 32),
        ),
    ] {
        let mut rows = Vec::new();
        for subject in peers::subjects(&TERMINATORS, settings).0 {
            let running = peers::start(&subject, backend);
            eprintln!("measuring {} with {count} idle tunnels ...", running.name);
            let pid = running.pid().expect("a process of its own");
            let per_tunnel = measure::idle_memory(&running.target, pid, count)
                .await
                .with_context(|| problems(&running.log()))?;
            rows.push(Row::new(&running.name, per_tunnel));
        }
        scenarios.push(Scenario {
            id,
            title,
            unit: "KiB per tunnel",
            higher_is_better: false,
            baseline: BEST_PEER,
            target: Some(Target {
                limit: Some(16.0),
                ..Target::new(
                    &[Peer::Router.name()],
                    1.0,
                    "below every peer, and at most 16 KiB",
                )
            }),
            method: format!(
                "{count} TLS tunnels opened one after another to a freshly started server and held idle (handshake \
                 done, one byte echoed through the backend, so the backend connection exists too), after 8 warm-up \
                 tunnels; the growth of the server's resident memory (VmRSS of all its processes: nginx's master and \
                 two workers, HAProxy's one process with two threads, Envoy's one process with two workers) divided \
                 by {count}. Each peer as it ships but for what the bench sets (bench/peers/): nginx stream with \
                 proxy_buffer_size 16k, HAProxy with tune.bufsize 16384 and maxconn 9950, Envoy with \
                 per_connection_buffer_limit_bytes at its 1 MiB default (a cap, not an allocation).{}",
                if id == "memory-10k" && !settings.quick {
                    " 9,900 rather than 10,000: each tunnel holds two descriptors in the server, and this machine's hard \
                     limit of 20,000 descriptors per process cannot be raised here (no CAP_SYS_RESOURCE)."
                } else {
                    ""
                }
            ),
            rows,
        });
    }
    Ok(scenarios.try_into().expect("two scenarios"))
}

/// The TLS terminators of the memory and scaling scenarios.
const TERMINATORS: [Peer; 4] = [Peer::Router, Peer::NginxStream, Peer::Haproxy, Peer::Envoy];

/// Scenario 7: throughput and server CPU at 1, 16, 256 and 1,024 tunnels, the
/// router against every other TLS terminator.
pub async fn scaling(settings: &Settings, backend: SocketAddr) -> anyhow::Result<[Scenario; 2]> {
    let counts: &[usize] = if settings.quick {
        &[1, 16]
    } else {
        &[1, 16, 256, 1024]
    };
    let total = settings.size(256 << 20, 1 << 20);
    // The current router only, also in a comparison with a baseline.
    let running = TERMINATORS.map(|peer| {
        let subject = peers::Subject {
            peer,
            name: peer.name().to_string(),
            router_bin: settings.router_bin.clone(),
        };
        peers::start(&subject, backend)
    });
    let mut throughput = Vec::new();
    let mut cpu = Vec::new();
    for &n in counts {
        eprintln!("measuring {n} tunnels ...");
        let each = total / n;
        // The peers take turns, run after run.
        let mut rates = vec![Vec::new(); running.len()];
        let mut cpu_per_gib = vec![Vec::new(); running.len()];
        for _ in 0..settings.size(3, 1) {
            for (i, peer) in running.iter().enumerate() {
                let pid = peer.pid().expect("a process of its own");
                let conns = measure::connect_all(&peer.target, n).await?;
                let before = measure::tree_cpu_secs(pid);
                let secs = measure::transfer(conns, each).await?;
                let used = measure::tree_cpu_secs(pid) - before;
                rates[i].push(measure::mib_per_s(each * n, secs));
                cpu_per_gib[i].push(used / ((each * n) as f64 / f64::from(1 << 30)));
            }
        }
        let group = format!("{n} tunnel{}", if n == 1 { "" } else { "s" });
        for (i, peer) in running.iter().enumerate() {
            throughput.push(Row::grouped(&peer.name, &group, median(rates[i].clone())));
            cpu.push(Row::grouped(
                &peer.name,
                &group,
                median(cpu_per_gib[i].clone()),
            ));
        }
    }
    let method = format!(
        "{} MiB each way in all, split evenly over 1, 16, 256 and 1,024 TLS tunnels open at once \
         (so 256 KiB each at 1,024), through the router's direct port, nginx stream, HAProxy and Envoy to the same \
         echo backend; all run at once and take turns, the median of three runs.",
        total >> 20
    );
    Ok([
        Scenario {
            id: "scaling-throughput",
            title: "Scaling: throughput by number of tunnels",
            unit: "MiB/s each way, all tunnels",
            higher_is_better: true,
            baseline: BEST_PEER,
            target: Some(Target {
                // The largest count (16 in the smoke test).
                group: Some(if settings.quick {
                    "16 tunnels"
                } else {
                    "1024 tunnels"
                }),
                ..Target::new(
                    &[Peer::Router.name()],
                    1.0,
                    "at 1,024 tunnels, at least 1.0x the best peer",
                )
            }),
            method: method.clone(),
            rows: throughput,
        },
        Scenario {
            id: "scaling-cpu",
            title: "Scaling: server CPU by number of tunnels",
            unit: "CPU seconds per GiB each way",
            higher_is_better: false,
            baseline: BEST_PEER,
            target: None,
            method: format!(
                "{method} The server's CPU time (user + system, all its processes and threads, from /proc) during the \
                 transfer, per GiB carried each way: what each tunnel costs is this times its share of the bytes."
            ),
            rows: cpu,
        },
    ])
}

/// The server's warnings and errors, to explain a failure.
fn problems(log: &str) -> String {
    let found: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(10)
        .collect();
    format!(
        "the server's first warnings and errors:\n{}",
        found.join("\n")
    )
}
