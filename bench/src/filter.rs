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
/// entry for the filter cut out; the two take turns, the median of three each.
pub fn overhead(settings: &Settings, backend: &Backend) -> anyhow::Result<Scenario> {
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
    let (mut rps, mut p99) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..settings.size(3, 1) {
        for (i, (name, envoy)) in envoys.iter().enumerate() {
            eprintln!("measuring {name} ...");
            let url = format!("http://{}/index.html", envoy.listener("web"));
            let (r, p) = measure::wrk(&url, settings.time(10, 1000), settings.size(32, 4))?;
            rps[i].push(r);
            p99[i].push(p);
        }
    }
    let p99: Vec<f64> = p99.into_iter().map(measure::median).collect();
    Ok(Scenario {
        id: "filter-overhead",
        title: "Filter overhead on ordinary (non-upgrade) requests",
        unit: "requests/s",
        higher_is_better: true,
        baseline: WITHOUT,
        target: Some(Target::new(&[WITH], 0.95, "less than 5% fewer requests/s")),
        method: format!(
            "wrk -t2 -c32 -d10s (plain HTTP/1.1 keep-alive) against envoy/behind-l7.yaml in front of the backend's \
             HTTP port, as shipped and with the filter's http_filters entry cut out; both Envoys run at once and take \
             turns, the median of three runs each. 99th-percentile latency (median of the runs): {WITHOUT} {:.2} ms, \
             {WITH} {:.2} ms.",
            p99[0], p99[1]
        ),
        rows: vec![
            Row::new(WITHOUT, measure::median(rps[0].clone())),
            Row::new(WITH, measure::median(rps[1].clone())),
        ],
    })
}
