//! The benchmark code runs: one tiny iteration of every scenario against the
//! real peers and the real chain, producing a figure for every subject. No
//! figure is judged here; measurements belong to `make bench`.

use std::path::PathBuf;

use alpn_bench::{compare, report, run, Baseline, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_reports() {
    let router_bin = integration_tests::built("target/debug/alpn-router", "make build");
    let settings = Settings {
        quick: true,
        router_bin: router_bin.clone(),
        bench_bin: PathBuf::from(env!("CARGO_BIN_EXE_alpn-bench")),
        only: Vec::new(),
        baseline: None,
    };
    let scenarios = run(&settings).await.expect("the scenarios run");
    let ids: Vec<&str> = scenarios.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "data-path-1",
            "data-path-64",
            "data-path-64-cpu",
            "websocket-upload",
            "chain-throughput",
            "chain-cpu",
            "latency-p50",
            "latency-p99",
            "latency-distance-p50",
            "handshakes",
            "handshakes-resumed",
            "memory-1k",
            "memory-10k",
            "filter-overhead",
            "filter-cpu",
            "scaling-throughput",
            "scaling-cpu",
        ]
    );
    for s in &scenarios {
        for r in &s.rows {
            assert!(
                s.baseline_row(r).is_some(),
                "{} / {}: no baseline in its group",
                s.id,
                r.label()
            );
            // A rate or a time must be positive; a memory growth over a few
            // tunnels, or CPU over a tiny transfer, may be 0.
            let plausible =
                if s.higher_is_better || s.id.starts_with("latency") || s.id == "filter-cpu" {
                    r.value > 0.0
                } else {
                    r.value >= 0.0
                };
            assert!(
                r.value.is_finite() && plausible,
                "{} / {}: {}",
                s.id,
                r.label(),
                r.value
            );
        }
        if let Some(target) = &s.target {
            assert_eq!(
                s.targeted().count(),
                target.subjects.len(),
                "{}: every target subject measured",
                s.id
            );
        }
    }
    let scaling = &scenarios[15];
    assert_eq!(
        scaling.rows.iter().map(|r| r.label()).collect::<Vec<_>>(),
        [
            "alpn-router, 1 tunnel",
            "nginx stream, 1 tunnel",
            "HAProxy tcp+ssl, 1 tunnel",
            "Envoy tcp_proxy, 1 tunnel",
            "alpn-router, 16 tunnels",
            "nginx stream, 16 tunnels",
            "HAProxy tcp+ssl, 16 tunnels",
            "Envoy tcp_proxy, 16 tunnels",
        ]
    );
    // Every peer in the memory scenarios, each a process of its own.
    for id in ["memory-1k", "memory-10k"] {
        let memory = scenarios.iter().find(|s| s.id == id).unwrap();
        assert_eq!(
            memory.rows.iter().map(|r| r.label()).collect::<Vec<_>>(),
            [
                "alpn-router",
                "nginx stream",
                "HAProxy tcp+ssl",
                "Envoy tcp_proxy"
            ]
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let environment = report::environment(&router_bin);
    let report = report::Report {
        date: "today",
        environment: &environment,
        scenarios: &scenarios,
        discussion: "## Discussion\n\nwords\n",
    };
    report::write(
        &report,
        dir.path(),
        &dir.path().join("plots"),
        &dir.path().join("BENCHMARKS.md"),
        "plots",
    )
    .unwrap();
    let md = std::fs::read_to_string(dir.path().join("BENCHMARKS.md")).unwrap();
    for line in [
        "| Router data path, direct TLS, one tunnel | at least 1.05x the best peer | alpn-router |",
        "| WebSocket upload (client to router, masked) against download, one tunnel | at least 0.9x the download figure | websocket, upload (client to router, masked) |",
        "| Full chain: download through nginx (as the ALB), Envoy + filter, router | at least 0.95x plain HTTPS through the same chain | tunnel via nginx + Envoy, websocket |",
        "| Tunnel set-up latency, median | at most 1.0x one HTTPS request, with the pool | tunnel via nginx + Envoy, websocket, pre-opened (--pool 4), route with early_data (0-RTT) |",
        "| Filter overhead on ordinary (non-upgrade) requests | within 2% of Envoy without the filter | Envoy with the filter |",
        "| alpn-router, 16 tunnels |",
        "| Full TLS 1.3 handshakes per second | at least 1.1x the best peer | alpn-router |",
        "| Memory per idle tunnel, 1,000 tunnels | below every peer, and at most 16 KiB | alpn-router |",
        "![Scaling: server CPU by number of tunnels](plots/scaling-cpu.svg)",
    ] {
        assert!(md.contains(line), "{line:?} missing from:\n{md}");
    }
    assert!(md.ends_with("## Discussion\n\nwords\n"));
    for s in &scenarios {
        let svg = std::fs::read_to_string(dir.path().join(format!("plots/{}.svg", s.id))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(&s.rows[0].subject));
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("latest.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenarios"].as_array().map(Vec::len), Some(17));
    assert_eq!(json["scenarios"][15]["rows"][4]["group"], "16 tunnels");
}

/// A comparison run: the same router binary as its own baseline, so the code
/// paths run (a second router in every compared scenario, a second chain) and
/// every router subject is paired, without a second build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_router_runs_next_to_the_current_one() {
    let router_bin = integration_tests::built("target/debug/alpn-router", "make build");
    let baseline = Baseline {
        rev: "same".into(),
        router_bin: router_bin.clone(),
    };
    let settings = Settings {
        quick: true,
        router_bin,
        bench_bin: PathBuf::from(env!("CARGO_BIN_EXE_alpn-bench")),
        only: Vec::new(),
        baseline: Some(baseline.clone()),
    };
    let scenarios = run(&settings).await.expect("the scenarios run");
    let ids: Vec<&str> = scenarios.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "data-path-1",
            "data-path-64",
            "data-path-64-cpu",
            "websocket-upload",
            "chain-throughput",
            "chain-cpu",
            "latency-p50",
            "latency-p99",
            "latency-distance-p50",
            "handshakes",
            "handshakes-resumed",
            "memory-1k",
            "memory-10k",
        ]
    );
    let pairs = compare::pairs(&scenarios, &baseline);
    let paired: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.scenario, p.subject.as_str()))
        .collect();
    for expected in [
        ("data-path-1", "alpn-router"),
        ("data-path-64", "alpn-router"),
        ("data-path-64-cpu", "alpn-router"),
        (
            "websocket-upload",
            "websocket, upload (client to router, masked)",
        ),
        ("websocket-upload", "alpn, download (reference)"),
        ("chain-throughput", "tunnel, direct to the router"),
        ("chain-cpu", "tunnel via nginx + Envoy, alpn-ping"),
        ("latency-p50", "tunnel via nginx + Envoy, websocket"),
        ("handshakes", "alpn-router"),
        ("handshakes-resumed", "alpn-router"),
        ("memory-10k", "alpn-router"),
    ] {
        assert!(paired.contains(&expected), "{expected:?} not in {paired:?}");
    }
    // 1 + 1 + 1 + 4 + 4 + 24 + 4 + 4 + 1 + 1 + 1 + 1: the router's subjects
    // (in chain-cpu, the four tunnels in each of six groups), and no other.
    assert_eq!(pairs.len(), 47, "{paired:?}");
    for p in &pairs {
        assert!(p.ratio.is_finite() || p.baseline == 0.0, "{p:?}");
    }
    let data_path = &pairs[0];
    assert_eq!(data_path.round_ratios.len(), 1, "{data_path:?}");

    let dir = tempfile::tempdir().unwrap();
    let environment = report::environment(&settings.router_bin);
    let comparison = compare::Comparison {
        date: "today",
        environment: &environment,
        baseline_rev: "same",
        pairs: &pairs,
        scenarios: &scenarios,
    };
    let md = compare::write(&comparison, dir.path()).unwrap();
    assert!(
        md.contains("| data-path-1 | alpn-router | MiB/s each way | "),
        "{md}"
    );
    assert!(md.contains("| alpn-router (baseline same) | "), "{md}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("compare-same.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["pairs"].as_array().map(Vec::len), Some(47));
}
