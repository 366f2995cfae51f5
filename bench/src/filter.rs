//! Scenario 6: what the upgrade filter costs ordinary (non-upgrade) requests:
//! Envoy's requests/s and p99 with the filter against the same Envoy without it.

use integration_tests::envoy::{Bootstrap, Envoy};

use crate::backend::Backend;
use crate::measure;
use crate::report::{Row, Scenario, Target};
use crate::Settings;

const WITHOUT: &str = "Envoy without the filter";
const WITH: &str = "Envoy with the filter";

/// wrk against `envoy/behind-l7.yaml` as shipped, and with its `http_filters`
/// entry for the filter cut out; the two take turns (each goes first in half
/// the rounds), the median of four each.
/// Two scenarios: requests/s (the target), and Envoy's own CPU time per
/// request, which does not depend on how much of the machine Envoy got.
pub fn overhead(settings: &Settings, backend: &Backend) -> anyhow::Result<[Scenario; 2]> {
    let with = Bootstrap::shipped("behind-l7.yaml")
        .port(8080, 0)
        .port(8081, backend.http.port());
    let text = with.text();
    let (start, end) = (
        text.find("# BEGIN fragment.yaml http_filters"),
        text.find("# END fragment.yaml http_filters"),
    );
    let (Some(start), Some(end)) = (start, end) else {
        anyhow::bail!("envoy/behind-l7.yaml has no marked http_filters piece");
    };
    let without = Bootstrap::from_text(
        "behind-l7.yaml",
        format!("{}{}", &text[..start], &text[end..]),
    );
    let envoys = [
        (WITHOUT, Envoy::start(&without)),
        (WITH, Envoy::start(&with)),
    ];
    let mut runs: [Vec<(measure::Wrk, f64)>; 2] = [Vec::new(), Vec::new()];
    // Four rounds, the order swapped every other round, so that neither Envoy
    // always runs first (it did: the one without the filter, in every round).
    for round in 0..settings.size(4, 1) {
        for i in crate::turns(envoys.len(), round, &[0]) {
            let (name, envoy) = &envoys[i];
            eprintln!("measuring {name} ...");
            let url = format!("http://{}/index.html", envoy.listener("web"));
            let before = measure::tree_cpu_secs(envoy.pid());
            let w = measure::wrk(&url, settings.time(10, 1000), settings.size(32, 4))?;
            let cpu = measure::tree_cpu_secs(envoy.pid()) - before;
            runs[i].push((w, cpu * 1e6 / w.requests.max(1) as f64));
        }
    }
    let median_of = |i: usize, f: fn(&(measure::Wrk, f64)) -> f64| {
        measure::median(runs[i].iter().map(f).collect())
    };
    let rps = |i| median_of(i, |(w, _)| w.rps);
    let p99 = |i| median_of(i, |(w, _)| w.p99_ms);
    let cpu = |i| median_of(i, |(_, us)| *us);
    let setup = "wrk -t2 -c32 -d10s (plain HTTP/1.1 keep-alive) against envoy/behind-l7.yaml in front of the \
                 backend's HTTP port, as shipped and with the filter's http_filters entry cut out; both Envoys \
                 run at once and take turns (each first in every other round), the median of four runs each.";
    Ok([
        Scenario {
            id: "filter-overhead",
            title: "Filter overhead on ordinary (non-upgrade) requests",
            unit: "requests/s",
            higher_is_better: true,
            baseline: WITHOUT,
            target: Some(Target::new(&[WITH], 0.98, "within 2% of Envoy without the filter")),
            method: format!(
                "{setup} 99th-percentile latency (median of the runs): {WITHOUT} {:.2} ms, {WITH} {:.2} ms.",
                p99(0),
                p99(1)
            ),
            rows: vec![Row::new(WITHOUT, rps(0)), Row::new(WITH, rps(1))],
        },
        Scenario {
            id: "filter-cpu",
            title: "Filter overhead: Envoy's CPU per ordinary request",
            unit: "µs of CPU per request",
            higher_is_better: false,
            baseline: WITHOUT,
            target: None,
            method: "The same runs: Envoy's CPU time (user + system, all its threads, from /proc) during each \
                     wrk run, divided by the requests wrk completed. Unlike requests/s, it does not depend on how \
                     much of the machine Envoy got while wrk, the backend and other work shared it."
                .into(),
            rows: vec![Row::new(WITHOUT, cpu(0)), Row::new(WITH, cpu(1))],
        },
    ])
}
