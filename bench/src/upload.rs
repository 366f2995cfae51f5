//! Scenario 8: the WebSocket upload direction. Client frames are masked and the
//! router unmasks them; server frames are not, so the two directions of a
//! WebSocket tunnel cost the router differently. One tunnel uploads through the
//! router's upgrade listener and one downloads, in turns in the same run, with
//! no load balancer or Envoy in front (their costs would hide the framing's);
//! raw `alpn` both ways is shown for reference, to tell what the masking costs
//! from what the direction costs.

use std::time::Instant;

use alpn_protocol::framing::Io;
use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::{Client, Options, Path, ServerUrl, UpgradeMode};
use tokio::io::AsyncWriteExt;

use crate::backend::Backend;
use crate::measure;
use crate::peers::RouterProcess;
use crate::report::{Row, Scenario, Target};
use crate::Settings;

/// The baseline: WebSocket from the router to the client (unmasked frames).
const WS_DOWNLOAD: &str = "websocket, download (router to client)";
/// The subject held to the target: WebSocket from the client to the router.
const WS_UPLOAD: &str = "websocket, upload (client to router, masked)";

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the backend to the client (the `source` route).
    Download,
    /// From the client to the backend (the `sink` route).
    Upload,
}

/// The subjects, in report order: name, framing, direction.
const SUBJECTS: [(&str, Framing, Direction); 4] = [
    (
        WS_DOWNLOAD,
        Framing::WebSocket(Subprotocol::Alpn),
        Direction::Download,
    ),
    (
        WS_UPLOAD,
        Framing::WebSocket(Subprotocol::Alpn),
        Direction::Upload,
    ),
    (
        "alpn, download (reference)",
        Framing::Alpn,
        Direction::Download,
    ),
    ("alpn, upload (reference)", Framing::Alpn, Direction::Upload),
];

/// A tunnel client for `alpn` with `framing`, straight to the router's upgrade
/// listener (plain HTTP, as Envoy reaches it); its TLS configuration (and
/// session cache) is built once, as `alpn-tunnel` does.
fn client(router: &RouterProcess, alpn: &str, framing: Framing) -> Client {
    let upgrade = router.upgrade.expect("an upgrade listener");
    let options = Options {
        sni: Some("envoy.test".into()),
        ca: Some(vec![router.cert.der()]),
        upgrade: UpgradeMode::Framing(framing),
        ..Options::default()
    };
    let url = ServerUrl::parse(&format!("http://{upgrade}")).expect("a server URL");
    Client::new(url, alpn, options).expect("a tunnel client")
}

/// Scenario 8: MiB/s of one upload and one download per framing through the
/// router's upgrade listener.
pub async fn websocket_upload(settings: &Settings, backend: &Backend) -> anyhow::Result<Scenario> {
    let start = |router_bin| {
        RouterProcess::start(
            router_bin,
            "[upgrade]\nlisten = \"127.0.0.1:0\"\n\n[direct]\nlisten = \"127.0.0.1:0\"\n",
            &[("source", backend.source), ("sink", backend.sink)],
        )
    };
    let router = start(&settings.router_bin);
    let baseline = settings
        .baseline
        .as_ref()
        .map(|b| (b, start(&b.router_bin)));
    let bytes = settings.size(256 << 20, 1 << 20) as u64;
    // Each subject, then the same with the baseline router (if any).
    let mut subjects = Vec::new();
    let mut paired = Vec::new();
    for &(name, framing, direction) in &SUBJECTS {
        let alpn = match direction {
            Direction::Download => "source",
            Direction::Upload => "sink",
        };
        let with = |router| (client(router, alpn, framing), framing, direction);
        subjects.push((name.to_string(), with(&router)));
        if let Some((b, baseline_router)) = &baseline {
            paired.push(subjects.len() - 1);
            subjects.push((b.subject(name), with(baseline_router)));
        }
    }
    let mut runs = vec![Vec::new(); subjects.len()];
    // Round-robin over the subjects, so that a noisy moment hurts all alike.
    // Five rounds: one transfer lasts half a second, and single ones swing.
    for round in 0..settings.size(5, 1) {
        eprintln!(
            "measuring WebSocket upload against download, round {} ...",
            round + 1
        );
        for i in crate::turns(subjects.len(), round, &paired) {
            let (_, (client, framing, direction)) = &subjects[i];
            let mut s: Box<dyn Io> = client.connect_via(Path::Upgrade(*framing)).await?;
            let started = Instant::now();
            match direction {
                Direction::Download => measure::download(&mut s, bytes).await?,
                Direction::Upload => measure::upload(&mut s, bytes).await?,
            }
            let secs = started.elapsed().as_secs_f64();
            // A clean end (inner close_notify), outside the timing.
            let _ = s.shutdown().await;
            runs[i].push(measure::mib_per_s(bytes as usize, secs));
        }
    }
    let rows = subjects
        .iter()
        .zip(runs)
        .map(|((name, _), r)| Row::median_of(name, r))
        .collect();
    Ok(Scenario {
        id: "websocket-upload",
        title: "WebSocket upload (client to router, masked) against download, one tunnel",
        unit: "MiB/s",
        higher_is_better: true,
        baseline: WS_DOWNLOAD,
        target: Some(Target::new(
            &[WS_UPLOAD],
            0.9,
            "at least 0.9x the download figure",
        )),
        method: format!(
            "One tunnel per subject, opened with the project's client library straight to the router's upgrade \
             listener (plain HTTP, as Envoy reaches it; no load balancer and no Envoy, whose costs would hide the \
             framing's), inner TLS 1.3 to the router, then {} MiB one way: a download from the backend's `source` \
             route (the router writes unmasked WebSocket frames) or an upload to its `sink` route (the client masks \
             its frames, the router unmasks them; the clock stops when the backend's one-byte answer that all bytes \
             arrived is back). The clock starts after the tunnel is open. The WebSocket tunnels offer `alpn-ping, \
             alpn`, so they run as `websocket-ping`, as `alpn-tunnel`'s do. Raw `alpn` both ways is shown for \
             reference: it separates what the masking costs from what the direction costs. Subjects take turns; \
             the median of five runs.",
            bytes >> 20
        ),
        rows,
    })
}
