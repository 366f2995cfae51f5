//! The hops in front of the router restarted under load (tunnels in every
//! framing moving data, each byte checked), with an `alpn-tunnel forward`
//! running across: Envoy with the filter drained by a hot restart (live
//! tunnels flow on until they end) and restarted (a visible end), and nginx,
//! the load balancer stand-in, reloaded (its old workers keep live tunnels)
//! and restarted. New tunnels work as soon as the hop is back, and the
//! running `forward` recovers without being restarted.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_tunnel::{Client, Options, ServerUrl, Timeouts, UpgradeMode};
use integration_tests::envoy::Envoy;
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::payload;
use sha1::{Digest, Sha1};
use support::load::Flow;
use support::{
    backend, config, echo, echo_round_trip, Backend, InProcessRouter, Logged, Pki, DEADLINE,
};

/// The framings a tunnel through an HTTP hop can take.
const UPGRADES: [Framing; 4] = [
    Framing::Alpn,
    Framing::AlpnPing,
    Framing::WebSocket(Subprotocol::Alpn),
    Framing::WebSocket(Subprotocol::AlpnPing),
];

/// The router with an echo route, and Envoy with the filter in front of it.
struct Servers {
    pki: Pki,
    router: InProcessRouter,
    _echo: Backend,
}

impl Servers {
    fn start() -> Servers {
        let pki = Pki::new();
        let echo_backend = backend(echo);
        let router = InProcessRouter::start(
            pki.dir.path(),
            &config(&format!(
                "[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n",
                echo_backend.addr
            )),
        );
        Servers {
            pki,
            router,
            _echo: echo_backend,
        }
    }

    /// A client of `server` in `framing`, trusting `outer_ca` for the load balancer.
    fn client(
        &self,
        server: &str,
        outer_ca: Option<rustls::pki_types::CertificateDer<'static>>,
        framing: Framing,
    ) -> Client {
        let options = Options {
            sni: Some("router.test".into()),
            ca: Some(vec![self.pki.server_ca.clone()]),
            outer_ca: outer_ca.map(|c| vec![c]),
            upgrade: UpgradeMode::Framing(framing),
            timeouts: Timeouts {
                connect: DEADLINE,
                tls: DEADLINE,
                upgrade: DEADLINE,
            },
            ..Options::default()
        };
        Client::new(ServerUrl::parse(server).unwrap(), "echo", options).unwrap()
    }

    /// One flow per framing through `server`, each shown to move data.
    async fn flows(
        &self,
        server: &str,
        outer_ca: Option<rustls::pki_types::CertificateDer<'static>>,
        seed: u64,
    ) -> Vec<Flow> {
        let mut flows = Vec::new();
        for (i, f) in UPGRADES.into_iter().enumerate() {
            let (stream, _) = self
                .client(server, outer_ca.clone(), f)
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", f.name()));
            flows.push(Flow::start(f.name(), stream, seed + i as u64));
        }
        for flow in &flows {
            flow.progress(256 << 10).await;
        }
        flows
    }

    /// A new tunnel in each framing through `server` carries 256 KiB both
    /// ways, checked.
    async fn new_tunnels_work(
        &self,
        server: &str,
        outer_ca: Option<rustls::pki_types::CertificateDer<'static>>,
        seed: u64,
    ) {
        for f in UPGRADES {
            let (stream, _) = self
                .client(server, outer_ca.clone(), f)
                .connect()
                .await
                .unwrap_or_else(|e| panic!("a new tunnel via {}: {e}", f.name()));
            let sent = payload(256 << 10, seed);
            let back = echo_round_trip(stream, &sent)
                .await
                .unwrap_or_else(|e| panic!("a new tunnel via {}: {e}", f.name()));
            assert_eq!(
                back,
                (sent.len(), Sha1::digest(&sent).to_vec()),
                "a new tunnel via {}",
                f.name()
            );
        }
    }
}

/// Live flows keep moving, then end with every byte back and a clean end.
async fn flow_on_and_finish(flows: Vec<Flow>, what: &str) {
    for flow in &flows {
        flow.progress(1 << 20).await;
    }
    for flow in flows {
        let name = flow.name.clone();
        flow.finish()
            .await
            .assert_complete(&format!("{name}, {what}"));
    }
}

/// Flows whose hop was cut under them: what came back is right, and the end
/// is visible (an error, never a clean end that would hide lost bytes).
async fn cut_visibly(flows: Vec<Flow>, what: &str) {
    for flow in flows {
        let name = flow.name.clone();
        let outcome = flow.outcome().await;
        assert_eq!(outcome.wrong_at, None, "{name}, {what}: {outcome:?}");
        assert!(outcome.echoed > 0, "{name}, {what}: {outcome:?}");
        assert!(
            outcome.end.is_err(),
            "{name}, {what}: a clean end although the hop was cut: {outcome:?}"
        );
    }
}

/// A user's `alpn-tunnel forward` for `echo` to `server`.
struct Forward {
    process: Logged,
    local: SocketAddr,
}

impl Forward {
    fn start(server: &str, pki: &Pki, outer_ca: Option<&Path>) -> Forward {
        let mut command = integration_tests::tunnel_command();
        command
            .args(["forward", "--server", server, "--alpn", "echo=127.0.0.1:0"])
            .args(["--sni", "router.test", "--timeout", "5s", "--ca"])
            .arg(pki.path("router-ca.pem"))
            .env_remove("ALPN_TUNNEL_UPGRADE");
        if let Some(ca) = outer_ca {
            command.arg("--outer-ca").arg(ca);
        }
        let mut process = Logged::spawn(&mut command);
        let local = process.address_on_line(" for echo at ", "listening on ");
        Forward { process, local }
    }

    /// A local connection carries 1 MiB both ways, checked.
    fn works(&self, seed: u64) {
        let sent = payload(1 << 20, seed);
        let mut s = TcpStream::connect(self.local).expect("the forward's listener stays up");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut writer = s.try_clone().unwrap();
        let data = sent.clone();
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(&data);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut back = Vec::new();
        let end = s.read_to_end(&mut back);
        sending.join().unwrap();
        assert!(
            end.is_ok() && back == sent,
            "a local connection: {end:?}, {} of {} bytes:\n{}",
            back.len(),
            sent.len(),
            self.process.log()
        );
    }

    /// With the hop down: each of three local connections is closed
    /// promptly, nothing coming back, each with one line saying why; the
    /// forward keeps running and does not retry on its own.
    fn refuses_clearly(&mut self) {
        let closed = |log: &str| {
            log.lines()
                .filter(|l| l.contains("echo: local connection from 127.0.0.1:"))
                .filter(|l| l.contains(" closed: "))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let before = closed(&self.process.log()).len();
        for _ in 0..3 {
            let mut s = TcpStream::connect(self.local).expect("the forward's listener stays up");
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let _ = s.write_all(b"while the hop is down");
            let mut back = Vec::new();
            let end = s.read_to_end(&mut back);
            assert!(
                back.is_empty()
                    && !matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{end:?}, {back:?}"
            );
        }
        // The forward logs before it closes; the log is read a moment later.
        let started = std::time::Instant::now();
        let mut lines = closed(&self.process.log());
        while lines.len() < before + 3 && started.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(20));
            lines = closed(&self.process.log());
        }
        assert_eq!(lines.len() - before, 3, "{}", self.process.log());
        assert!(
            lines[before..]
                .iter()
                .all(|l| l.to_lowercase().contains("refused")),
            "{lines:?}"
        );
        self.process.wait_for("listening on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_drained_by_a_hot_restart_and_restarted_under_load() {
    let servers = Servers::start();
    let envoy = support::envoy_in_front(servers.router.upgrade);
    let web = envoy.listener("web");
    let server = format!("http://{web}");
    let mut forward = Forward::start(&server, &servers.pki, None);
    forward.works(1);

    // A graceful restart: the next epoch takes the listener, the old one
    // drains, and its live tunnels flow on until they end.
    let flows = servers.flows(&server, None, 10).await;
    let bootstrap = support::envoy_bootstrap(servers.router.upgrade, web.port());
    let mut next = envoy.hot_restart(&bootstrap, Duration::from_secs(1), Duration::from_secs(120));
    assert_eq!(next.listener("web"), web);
    servers.new_tunnels_work(&server, None, 11).await;
    forward.works(12);
    flow_on_and_finish(flows, "through the draining Envoy").await;
    drop(envoy);

    // A restart: SIGTERM cuts the live tunnels; while Envoy is down the
    // forward refuses each local connection clearly; once it is back on
    // the same port, new tunnels and the forward work again.
    let flows = servers.flows(&server, None, 20).await;
    next.terminate();
    cut_visibly(flows, "through an Envoy that stopped").await;
    forward.refuses_clearly();
    let _again = Envoy::start(&bootstrap);
    servers.new_tunnels_work(&server, None, 21).await;
    forward.works(22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_reloaded_and_restarted_under_load() {
    let servers = Servers::start();
    let envoy = support::envoy_in_front(servers.router.upgrade);
    let mut nginx = LoadBalancer::start(Kind::Nginx, envoy.listener("web"), DEADLINE * 3);
    let server = format!("https://{}", nginx.addr);
    let ca = Some(nginx.cert.der());
    let mut forward = Forward::start(&server, &servers.pki, Some(&nginx.cert.pem));
    forward.works(1);

    // A reload: new workers take new connections, the old ones keep the
    // live tunnels until they end.
    let flows = servers.flows(&server, ca.clone(), 10).await;
    nginx.reload();
    servers.new_tunnels_work(&server, ca.clone(), 11).await;
    forward.works(12);
    flow_on_and_finish(flows, "across an nginx reload").await;

    // A restart (a fast shutdown, then a start on the same port).
    let flows = servers.flows(&server, ca.clone(), 20).await;
    nginx.stop();
    cut_visibly(flows, "through an nginx that stopped").await;
    forward.refuses_clearly();
    nginx.start_again();
    servers.new_tunnels_work(&server, ca.clone(), 21).await;
    forward.works(22);
}
