//! The benchmark code runs: one tiny iteration of every scenario against the
//! real peers, producing a figure for every subject. No figure is judged here;
//! measurements belong to `make bench`.

use alpn_bench::{report, run, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_reports() {
    let router_bin = integration_tests::built("target/debug/alpn-router", "make build");
    let settings = Settings {
        quick: true,
        router_bin: router_bin.clone(),
    };
    let scenarios = run(&settings).await.expect("the scenarios run");
    let ids: Vec<&str> = scenarios.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "data-path-1",
            "data-path-64",
            "handshakes",
            "memory-1k",
            "filter-overhead"
        ]
    );
    for s in &scenarios {
        assert!(
            s.rows.iter().any(|r| r.subject == s.baseline),
            "{}: no baseline",
            s.id
        );
        for r in &s.rows {
            // A rate must be positive; a memory growth over a few tunnels may be 0.
            let plausible = if s.higher_is_better {
                r.value > 0.0
            } else {
                r.value >= 0.0
            };
            assert!(
                r.value.is_finite() && plausible,
                "{} / {}: {}",
                s.id,
                r.subject,
                r.value
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let env = report::environment(&router_bin);
    report::write(
        dir.path(),
        &dir.path().join("plots"),
        &dir.path().join("BENCHMARKS.md"),
        "plots",
        &env,
        &scenarios,
        "today",
    )
    .unwrap();
    let md = std::fs::read_to_string(dir.path().join("BENCHMARKS.md")).unwrap();
    assert!(md.contains("| Router data path, direct TLS, one tunnel (at least as fast as nginx stream) | alpn-router |"), "{md}");
    let svg = std::fs::read_to_string(dir.path().join("plots/handshakes.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("alpn-router"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("latest.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenarios"].as_array().map(Vec::len), Some(5));
}
