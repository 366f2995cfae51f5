//! The full chain a user behind a load balancer goes through: client -> nginx
//! (TLS, as the ALB: `deploy/load-balancers/nginx.conf`) -> Envoy with the
//! filter (`envoy/behind-l7.yaml`) -> router -> backend; and its scenarios:
//! bulk download per framing against plain HTTPS through the same nginx and
//! Envoy, and tunnel set-up latency against one HTTPS request.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use alpn_protocol::framing::Io;
use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::pool::{Pool, Source};
use alpn_tunnel::tls::client_config;
use alpn_tunnel::{Client, Options, Path, ServerUrl, UpgradeMode};
use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::Backend;
use crate::measure::{self, median, percentile};
use crate::peers::RouterProcess;
use crate::relay::DelayRelay;
use crate::report::{Row, Scenario, Target};
use crate::{Baseline, Settings};

/// The baseline of both scenarios.
const HTTPS: &str = "HTTPS via nginx + Envoy";
/// The tunnel with no load balancer: the router's direct port.
const DIRECT: &str = "tunnel, direct to the router";
/// A websocket tunnel through the chain, taken from a pool of pre-opened ones.
const POOLED: &str = "tunnel via nginx + Envoy, websocket, pre-opened (--pool 4)";
/// A websocket tunnel through the chain, its inner ClientHello sent behind
/// the upgrade request.
const EARLY: &str =
    "tunnel via nginx + Envoy, websocket, ClientHello behind the request (--early-hello)";
/// The same from a pool whose route takes TLS 1.3 early data.
const POOLED_0RTT: &str =
    "tunnel via nginx + Envoy, websocket, pre-opened (--pool 4), route with early_data (0-RTT)";
/// The echo route with `early_data` on the current router.
const ZERO_RTT_ALPN: &str = "echo-0rtt";
/// The pool's size in the latency scenario.
const POOL: usize = 4;

/// The framings through the chain, with their subjects' names.
const FRAMINGS: [(&str, Framing); 3] = [
    ("tunnel via nginx + Envoy, alpn", Framing::Alpn),
    ("tunnel via nginx + Envoy, alpn-ping", Framing::AlpnPing),
    (
        "tunnel via nginx + Envoy, websocket",
        Framing::WebSocket(Subprotocol::Alpn),
    ),
];

/// The running chain.
pub struct Chain {
    router: RouterProcess,
    _envoy: Envoy,
    lb: LoadBalancer,
    https: tokio_rustls::TlsConnector,
}

impl Chain {
    /// Starts the router (routes `echo` and `source`, and `echo-0rtt`, the
    /// echo with `early_data`, if `early_data`), Envoy with the filter in
    /// front of it and of the backend's HTTP port, and nginx in front of Envoy.
    pub fn start(backend: &Backend, router_bin: &std::path::Path, early_data: bool) -> Chain {
        let mut routes = format!(
            "\n[[route]]\nalpn = \"echo\"\nbackend = \"{e}\"\n\
             \n[[route]]\nalpn = \"source\"\nbackend = \"{s}\"\n",
            e = backend.echo,
            s = backend.source
        );
        if early_data {
            routes += &format!(
                "\n[[route]]\nalpn = \"{ZERO_RTT_ALPN}\"\nbackend = \"{}\"\nearly_data = true\n",
                backend.echo
            );
        }
        let router = RouterProcess::start_with_routes(
            router_bin,
            "[upgrade]\nlisten = \"127.0.0.1:0\"\ntrusted_peers = [\"127.0.0.1/32\"]\n\n\
             [direct]\nlisten = \"127.0.0.1:0\"\n",
            &routes,
        );
        let envoy = Envoy::start(
            &Bootstrap::shipped("behind-l7.yaml")
                .port(8080, 0)
                .port(9001, router.upgrade.expect("an upgrade listener").port())
                .port(8081, backend.http.port()),
        );
        let lb = LoadBalancer::start(Kind::Nginx, envoy.listener("web"), Duration::from_secs(60));
        let outer = client_config(&[lb.cert.der()], &["http/1.1"], None).expect("TLS client");
        Chain {
            router,
            _envoy: envoy,
            lb,
            https: tokio_rustls::TlsConnector::from(outer),
        }
    }

    /// A tunnel client for `alpn` along `path`; its TLS configurations (and
    /// session caches) are built once, as `alpn-tunnel` does.
    fn client(&self, alpn: &str, path: Path) -> Client {
        self.client_with(alpn, path, false)
    }

    /// [`Chain::client`], sending the inner ClientHello behind the upgrade
    /// request if `early_hello`.
    fn client_with(&self, alpn: &str, path: Path, early_hello: bool) -> Client {
        self.client_at(self.lb.addr, alpn, path, early_hello)
    }

    /// [`Chain::client_with`], reaching the load balancer at `lb` (a relay
    /// in front of it).
    fn client_at(&self, lb: SocketAddr, alpn: &str, path: Path, early_hello: bool) -> Client {
        let (server, upgrade) = match path {
            Path::Direct => (self.router.direct, UpgradeMode::Never),
            Path::Upgrade(f) => (lb, UpgradeMode::Framing(f)),
        };
        let options = Options {
            sni: Some("envoy.test".into()),
            ca: Some(vec![self.router.cert.der()]),
            outer_ca: Some(vec![self.lb.cert.der()]),
            upgrade,
            early_hello,
            ..Options::default()
        };
        let url = ServerUrl::parse(&format!("https://{server}")).expect("a server URL");
        Client::new(url, alpn, options).expect("a tunnel client")
    }

    /// A new TLS connection to the load balancer at `lb` (HTTP/1.1).
    async fn https_at(
        &self,
        lb: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(lb).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("envoy.test").unwrap();
        self.https.connect(name, tcp).await
    }

    /// One HTTPS GET of `path` on a new connection; reads the whole answer and
    /// returns the length of its body.
    async fn get(&self, path: &str) -> io::Result<u64> {
        self.get_at(self.lb.addr, path).await
    }

    /// [`Chain::get`] through the load balancer at `lb`.
    async fn get_at(&self, lb: SocketAddr, path: &str) -> io::Result<u64> {
        let mut s = self.https_at(lb).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut head = Vec::with_capacity(512);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!("GET {path}: {head}")));
        }
        let length = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            })
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no Content-Length: {head}")))?;
        measure::read_exactly(&mut s, length).await?;
        Ok(length)
    }
}

/// The chain, and with a baseline a second chain (its own router, Envoy and
/// nginx) in front of the baseline router.
pub struct Chains {
    current: Chain,
    baseline: Option<(Baseline, Chain)>,
    /// The backend's process, whose CPU the chain's CPU split counts.
    backend_pid: u32,
}

/// A subject of the chain's scenarios: its name, and a tunnel client for its
/// route and path, or `None` for the HTTPS baseline.
type Subject = (String, Option<(Client, Path)>);

impl Chains {
    /// Starts the chain in front of the current router, and one in front of
    /// the baseline router if `settings` has one.
    pub fn start(backend: &Backend, settings: &Settings) -> Chains {
        Chains {
            current: Chain::start(backend, &settings.router_bin, true),
            // A baseline router may predate `early_data`.
            baseline: settings
                .baseline
                .as_ref()
                .map(|b| (b.clone(), Chain::start(backend, &b.router_bin, false))),
            backend_pid: backend.pid(),
        }
    }

    /// The processes of a chain (the baseline's if `baseline`) whose CPU the
    /// split counts, in report order: the client (this process: the tunnel's
    /// or the HTTPS client is all it runs meanwhile), nginx, Envoy, the
    /// router and the backend, each with all its threads (nginx with its
    /// workers).
    fn processes(&self, baseline: bool) -> [(&'static str, u32, bool); 5] {
        let chain = match &self.baseline {
            Some((_, chain)) if baseline => chain,
            _ => &self.current,
        };
        [
            ("client", std::process::id(), false),
            (
                "nginx",
                chain.lb.pid().expect("nginx runs as a child"),
                true,
            ),
            ("Envoy", chain._envoy.pid(), true),
            ("router", chain.router.process.pid(), true),
            ("backend", self.backend_pid, true),
        ]
    }

    /// Every subject of the chain's scenarios for the route `alpn`, in report
    /// order, each tunnel followed by the same through the baseline's chain;
    /// and the indices of the subjects so followed (for [`crate::turns`]).
    fn subjects(&self, alpn: &str) -> (Vec<Subject>, Vec<usize>) {
        let mut paths = vec![(DIRECT, Path::Direct)];
        paths.extend(FRAMINGS.map(|(name, f)| (name, Path::Upgrade(f))));
        let mut subjects = Vec::new();
        let mut paired = Vec::new();
        for (name, path) in paths {
            subjects.push((
                name.to_string(),
                Some((self.current.client(alpn, path), path)),
            ));
            if let Some((b, chain)) = &self.baseline {
                paired.push(subjects.len() - 1);
                subjects.push((b.subject(name), Some((chain.client(alpn, path), path))));
            }
        }
        subjects.push((HTTPS.to_string(), None));
        (subjects, paired)
    }
}

/// Opens a tunnel with `client` along `path`.
async fn tunnel(client: &Client, path: Path) -> io::Result<Box<dyn Io>> {
    client.connect_via(path).await.map_err(io::Error::other)
}

/// Ends a tunnel cleanly (inner `close_notify`), outside any timing.
async fn close(mut stream: Box<dyn Io>) {
    let _ = stream.shutdown().await;
}

/// CPU seconds used so far by each of `processes` (see [`Chains::processes`]).
fn cpu_now(processes: &[(&'static str, u32, bool); 5]) -> [f64; 5] {
    processes.map(|(_, pid, tree)| match tree {
        true => measure::tree_cpu_secs(pid),
        false => measure::process_cpu_secs(pid),
    })
}

/// Scenario 2: MiB/s of one download per subject, through the chain per
/// framing and as plain HTTPS through the same nginx and Envoy; and where
/// the CPU of each download went, process by process (a baseline router's
/// subjects through the baseline's own chain).
pub async fn throughput(settings: &Settings, chains: &Chains) -> anyhow::Result<[Scenario; 2]> {
    let bytes = settings.size(256 << 20, 1 << 20) as u64;
    let gib = bytes as f64 / f64::from(1 << 30);
    let (subjects, paired) = chains.subjects("source");
    let baselines: Vec<usize> = paired.iter().map(|i| i + 1).collect();
    let processes = [chains.processes(false), chains.processes(true)];
    let chain = &chains.current;
    let mut runs = vec![Vec::new(); subjects.len()];
    // Per subject, per process: CPU seconds per GiB, one per round.
    let mut cpu = vec![vec![Vec::new(); 6]; subjects.len()];
    // Round-robin over the subjects, so that a noisy moment hurts all alike.
    for round in 0..settings.size(3, 1) {
        for i in crate::turns(subjects.len(), round, &paired) {
            let tunnel_to = &subjects[i].1;
            let started;
            let before;
            match tunnel_to {
                Some((client, path)) => {
                    let mut s = tunnel(client, *path).await?;
                    before = cpu_now(&processes[usize::from(baselines.contains(&i))]);
                    started = Instant::now();
                    measure::download(&mut s, bytes).await?;
                    let secs = started.elapsed().as_secs_f64();
                    close(s).await;
                    runs[i].push(measure::mib_per_s(bytes as usize, secs));
                }
                None => {
                    before = cpu_now(&processes[0]);
                    started = Instant::now();
                    let got = chain.get(&format!("/bytes/{bytes}")).await?;
                    anyhow::ensure!(got == bytes, "HTTPS download: {got} of {bytes} bytes");
                    runs[i].push(measure::mib_per_s(
                        bytes as usize,
                        started.elapsed().as_secs_f64(),
                    ));
                }
            }
            let after = cpu_now(&processes[usize::from(baselines.contains(&i))]);
            let used: Vec<f64> = (0..5)
                .map(|p| (after[p] - before[p]).max(0.0) / gib)
                .collect();
            cpu[i][5].push(used.iter().sum());
            for (p, u) in used.into_iter().enumerate() {
                cpu[i][p].push(u);
            }
        }
    }
    let mut cpu_rows = Vec::new();
    let groups = processes[0]
        .iter()
        .map(|(name, _, _)| *name)
        .chain(["all five"]);
    for (p, group) in groups.enumerate() {
        for (i, (name, _)) in subjects.iter().enumerate() {
            cpu_rows.push(Row::grouped(name, group, median(cpu[i][p].clone())));
        }
    }
    let rows = subjects
        .iter()
        .zip(runs)
        .map(|((name, _), r)| Row::median_of(name, r))
        .collect();
    let throughput = Scenario {
        id: "chain-throughput",
        title: "Full chain: download through nginx (as the ALB), Envoy + filter, router",
        unit: "MiB/s",
        higher_is_better: true,
        baseline: HTTPS,
        target: Some(Target::new(
            &FRAMINGS.map(|(n, _)| n),
            0.95,
            "at least 0.95x plain HTTPS through the same chain",
        )),
        method: format!(
            "One connection per subject downloads {} MiB from the same backend process: through a tunnel \
             (client TLS to nginx, upgrade through Envoy's filter to the router, inner TLS 1.3 to the router, \
             then the router's `source` route) per framing, or as one HTTPS `GET /bytes/N` through the same \
             nginx and Envoy to the backend's HTTP port. The clock starts after the tunnel is open (or at the \
             GET's connect). The direct tunnel (no load balancer) is shown for reference. Subjects take turns; \
             the median of three runs.",
            bytes >> 20
        ),
        rows,
    };
    let cpu = Scenario {
        id: "chain-cpu",
        title: "Full chain: where each download's CPU goes, process by process",
        unit: "CPU seconds per GiB",
        higher_is_better: false,
        baseline: HTTPS,
        target: None,
        method: format!(
            "The downloads above (with a baseline router, its own through its own nginx and Envoy): the CPU time (user + system, from /proc) each \
             process used during the download, per GiB. The client is the benchmark's own process (the \
             tunnel's client, or the HTTPS client: all it runs meanwhile); nginx with its workers; Envoy; the \
             router; the backend. {} rounds, the median of each. On two shared cores every figure is CPU that \
             the others could not use: where a subject's total is higher, its throughput is lower.",
            settings.size(3, 1)
        ),
        rows: cpu_rows,
    };
    Ok([throughput, cpu])
}

/// One sample from `pool`, taken once it is full again (the steady state of
/// a forward whose connections come less often than a refill takes): a
/// pre-opened tunnel's inner TLS and one byte echoed, in ms.
async fn pooled_sample(pool: &Pool, pools: &[&Pool]) -> anyhow::Result<f64> {
    let waited = Instant::now();
    while pools.iter().any(|p| p.ready() < POOL) {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(30),
            "the pool did not refill within 30 s ({} of {POOL} ready)",
            pool.ready()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    // As `alpn-tunnel forward` passes the local application's first
    // bytes: sent as early data where the route takes it.
    let sent = std::sync::atomic::AtomicBool::new(false);
    let first = async {
        sent.store(true, std::sync::atomic::Ordering::Relaxed);
        b"x".to_vec()
    };
    let (mut s, _, source) = pool.connect(first).await.map_err(io::Error::other)?;
    if !sent.load(std::sync::atomic::Ordering::Relaxed) {
        s.write_all(b"x").await?;
    }
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    // As `alpn-tunnel forward` ends a tunnel (its copy reads on to the
    // router's end), so that the session tickets that follow the answer of
    // a 0-RTT handshake are taken in.
    let _ = s.shutdown().await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    anyhow::ensure!(
        matches!(source, Source::Pooled { .. }),
        "a pooled sample did not get a pre-opened tunnel"
    );
    Ok(ms)
}

/// Scenario 3: time from connect to the first echoed byte (tunnels) or to the
/// whole answer (one HTTPS request), p50 and p99, as two scenarios.
pub async fn latency(settings: &Settings, chains: &Chains) -> anyhow::Result<[Scenario; 2]> {
    let samples = settings.size(400, 5);
    let (subjects, paired) = chains.subjects("echo");
    let chain = &chains.current;
    let mut times = vec![Vec::with_capacity(samples); subjects.len()];
    // The pooled subjects: `alpn-tunnel forward --pool` as a library, on the
    // echo route and on the same with early data.
    let websocket = Path::Upgrade(Framing::WebSocket(Subprotocol::Alpn));
    let pool_tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut pools = [("echo", POOLED), (ZERO_RTT_ALPN, POOLED_0RTT)].map(|(alpn, name)| {
        let client = std::sync::Arc::new(chain.client(alpn, websocket));
        let pool = Pool::start(client, POOL, &pool_tasks, stop.clone());
        (name, pool, Vec::with_capacity(samples))
    });
    let early_client = chain.client_with("echo", websocket, true);
    let mut early_times = Vec::with_capacity(samples);
    // One warm-up round (session caches, Envoy's upstream pools), then samples
    // taken in turns.
    for round in 0..=samples {
        let all: Vec<&Pool> = pools.iter().map(|(_, p, _)| &**p).collect();
        let mut taken = Vec::new();
        for (_, pool, _) in &pools {
            taken.push(pooled_sample(pool, &all).await?);
        }
        drop(all);
        for ((_, _, pooled_times), ms) in pools.iter_mut().zip(taken) {
            if round > 0 {
                pooled_times.push(ms);
            }
        }
        let mut one = [0u8; 1];
        // A fresh tunnel with the early hello, next to the pooled one.
        let started = Instant::now();
        let mut s = tunnel(&early_client, websocket).await?;
        s.write_all(b"x").await?;
        s.read_exact(&mut one).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        close(s).await;
        if round > 0 {
            early_times.push(ms);
        }
        for i in crate::turns(subjects.len(), round, &paired) {
            let tunnel_to = &subjects[i].1;
            let started = Instant::now();
            let stream = match tunnel_to {
                Some((client, path)) => {
                    let mut s = tunnel(client, *path).await?;
                    s.write_all(b"x").await?;
                    let mut one = [0u8; 1];
                    s.read_exact(&mut one).await?;
                    Some(s)
                }
                None => {
                    chain.get("/").await?;
                    None
                }
            };
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if let Some(s) = stream {
                close(s).await;
            }
            if round > 0 {
                times[i].push(ms);
            }
        }
    }
    stop.cancel();
    pool_tasks.close();
    pool_tasks.wait().await;
    let method = |p: &str| {
        format!(
            "{samples} samples per subject, taken in turns, after one warm-up round. A tunnel sample is a new \
             TCP connection, the outer TLS and the upgrade (through nginx and Envoy) or none (direct), the inner \
             TLS 1.3 handshake, then one byte echoed by the backend; the HTTPS sample is a new TLS connection to \
             nginx and one `GET /` answered by the backend through Envoy. Clients keep their TLS session caches \
             between samples, as `alpn-tunnel` and browsers do, so resumption applies alike. The pre-opened \
             samples take a websocket tunnel already through nginx and Envoy and upgraded from a pool of \
             {POOL} (`alpn-tunnel forward --pool`, waiting until both pools are full before each sample), then \
             run the inner TLS 1.3 handshake and echo one byte; on the route with `early_data` the byte goes \
             with the resumed ClientHello (0-RTT) and its echo comes back behind the router's handshake \
             messages. Pooled tunnels end as `alpn-tunnel forward` ends them (reading on to the router's \
             end, so the session tickets that follow a 0-RTT answer are taken in). The early-hello sample is a fresh websocket \
             tunnel whose inner ClientHello goes out in the same write as the upgrade request \
             (`alpn-tunnel --early-hello`), so the router has it as soon as it switches. {p}"
        )
    };
    let rows = |p: f64| {
        let mut rows: Vec<Row> = subjects
            .iter()
            .zip(&times)
            .map(|((name, _), t)| Row::new(name, percentile(t, p)))
            .collect();
        for (name, _, pooled_times) in &pools {
            rows.push(Row::new(name, percentile(pooled_times, p)));
        }
        rows.push(Row::new(EARLY, percentile(&early_times, p)));
        rows
    };
    // The median with the pool; the 99th percentile is reported.
    let target = Target::new(
        &[POOLED_0RTT],
        1.0,
        "at most 1.0x one HTTPS request, with the pool",
    );
    Ok([
        Scenario {
            id: "latency-p50",
            title: "Tunnel set-up latency, median",
            unit: "ms, p50",
            higher_is_better: false,
            baseline: HTTPS,
            target: Some(target),
            method: method("The median of each subject's samples."),
            rows: rows(50.0),
        },
        Scenario {
            id: "latency-p99",
            title: "Tunnel set-up latency, 99th percentile",
            unit: "ms, p99",
            higher_is_better: false,
            baseline: HTTPS,
            target: None,
            method: method("The 99th percentile (nearest rank) of each subject's samples."),
            rows: rows(99.0),
        },
    ])
}

/// The one-way delay between the client and the load balancer in
/// [`latency_at_a_distance`]: 10 ms round trips, a client in the same region.
const ONE_WAY: Duration = Duration::from_millis(5);

/// Scenario 3 again with the client [`ONE_WAY`] away from the load balancer
/// (a [`DelayRelay`] in front of nginx): the median set-up of one HTTPS
/// request, a fresh websocket tunnel, and pre-opened ones with and without
/// early data.
pub async fn latency_at_a_distance(
    settings: &Settings,
    chains: &Chains,
) -> anyhow::Result<Scenario> {
    let samples = settings.size(100, 3);
    let chain = &chains.current;
    let relay = DelayRelay::start(chain.lb.addr, ONE_WAY).await?;
    let websocket = Path::Upgrade(Framing::WebSocket(Subprotocol::Alpn));
    let fresh = chain.client_at(relay.addr, "echo", websocket, false);
    let pool_tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let pools = [("echo", POOLED), (ZERO_RTT_ALPN, POOLED_0RTT)].map(|(alpn, name)| {
        let client = std::sync::Arc::new(chain.client_at(relay.addr, alpn, websocket, false));
        (name, Pool::start(client, POOL, &pool_tasks, stop.clone()))
    });
    let all: Vec<&Pool> = pools.iter().map(|(_, p)| &**p).collect();
    let (mut https, mut tunnels) = (Vec::new(), Vec::new());
    let mut pooled = [Vec::new(), Vec::new()];
    for round in 0..=samples {
        let started = Instant::now();
        chain.get_at(relay.addr, "/").await?;
        let ms_https = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let mut s = tunnel(&fresh, websocket).await?;
        s.write_all(b"x").await?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await?;
        let ms_tunnel = started.elapsed().as_secs_f64() * 1000.0;
        close(s).await;
        let mut ms_pooled = [0.0; 2];
        for (i, (_, pool)) in pools.iter().enumerate() {
            ms_pooled[i] = pooled_sample(pool, &all).await?;
        }
        if round > 0 {
            https.push(ms_https);
            tunnels.push(ms_tunnel);
            for (times, ms) in pooled.iter_mut().zip(ms_pooled) {
                times.push(ms);
            }
        }
    }
    drop(all);
    stop.cancel();
    pool_tasks.close();
    pool_tasks.wait().await;
    let mut rows = vec![
        Row::new(HTTPS, percentile(&https, 50.0)),
        Row::new(FRAMINGS[2].0, percentile(&tunnels, 50.0)),
    ];
    for ((name, _), times) in pools.iter().zip(&pooled) {
        rows.push(Row::new(name, percentile(times, 50.0)));
    }
    Ok(Scenario {
        id: "latency-distance-p50",
        title: "Tunnel set-up latency with the client 10 ms (round trip) from the load balancer, median",
        unit: "ms, p50",
        higher_is_better: false,
        baseline: HTTPS,
        target: Some(Target::new(
            &[POOLED_0RTT],
            1.0,
            "at most 1.0x one HTTPS request, with the pool",
        )),
        method: format!(
            "The subjects of the set-up latency scenario, with a relay between the client and nginx that \
             holds every byte {} ms each way (the bench's own, as loopback has no distance and `tc netem` \
             is not available here). The relay does not delay the TCP handshake, which favours the \
             subjects that open a connection (the HTTPS request and the fresh tunnel) by one round trip \
             against a real network. {samples} samples per subject, taken in turns after one warm-up \
             round; the median.",
            ONE_WAY.as_millis()
        ),
        rows,
    })
}
