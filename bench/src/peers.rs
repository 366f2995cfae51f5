//! The TLS terminators measured side by side, all in front of the same echo
//! backend: the router's direct port, nginx `stream`, HAProxy in TCP mode,
//! Envoy with `tcp_proxy`; and plain TCP to the backend as the ceiling.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::load_balancer::{haproxy_command, nginx_command, spawn_on_free_port};
use integration_tests::process::Logged;
use integration_tests::tls::ServerCert;
use rustls::pki_types::CertificateDer;

use crate::Settings;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Plain TCP straight to the backend: the ceiling on this machine.
    RawTcp,
    /// alpn-router's direct TLS listener.
    Router,
    /// nginx `stream` terminating TLS.
    NginxStream,
    /// HAProxy `mode tcp` with `ssl`.
    Haproxy,
    /// Envoy terminating TLS with `tcp_proxy`.
    Envoy,
}

impl Peer {
    /// The TLS terminators and the ceiling, in report order.
    pub const ALL: [Peer; 5] = [
        Peer::RawTcp,
        Peer::Router,
        Peer::NginxStream,
        Peer::Haproxy,
        Peer::Envoy,
    ];

    /// The other TLS terminators: those "the best peer" is chosen from.
    pub const OTHERS: [Peer; 3] = [Peer::NginxStream, Peer::Haproxy, Peer::Envoy];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::RawTcp => "raw TCP (ceiling)",
            Peer::Router => "alpn-router",
            Peer::NginxStream => "nginx stream",
            Peer::Haproxy => "HAProxy tcp+ssl",
            Peer::Envoy => "Envoy tcp_proxy",
        }
    }
}

/// Where to connect to a peer, and how to trust it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate (`None` for raw TCP).
    pub cert: Option<CertificateDer<'static>>,
    /// The ALPN to offer (the router routes by it).
    pub alpn: Option<&'static str>,
}

/// A peer to start, under the name it is reported by.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Which peer.
    pub peer: Peer,
    /// Its name in reports: the peer's, or the baseline's for the baseline router.
    pub name: String,
    /// The `alpn-router` binary, for the router.
    pub router_bin: PathBuf,
}

/// `peers` as subjects, in order, with the baseline router (if any) right after
/// the router. The second value lists the indices of the subjects followed by
/// their baseline counterpart (for [`crate::turns`]).
pub fn subjects(peers: &[Peer], settings: &Settings) -> (Vec<Subject>, Vec<usize>) {
    let mut subjects = Vec::new();
    let mut paired = Vec::new();
    for &peer in peers {
        subjects.push(Subject {
            peer,
            name: peer.name().to_string(),
            router_bin: settings.router_bin.clone(),
        });
        if let (Peer::Router, Some(baseline)) = (peer, &settings.baseline) {
            paired.push(subjects.len() - 1);
            subjects.push(Subject {
                peer,
                name: baseline.subject(peer.name()),
                router_bin: baseline.router_bin.clone(),
            });
        }
    }
    (subjects, paired)
}

/// A running peer.
pub struct Running {
    /// Which peer.
    pub peer: Peer,
    /// Its name in reports.
    pub name: String,
    /// How to reach it.
    pub target: Target,
    /// Keeps the process (and its files) alive.
    _guard: Guard,
}

/// What keeps a peer running; its files live as long as it does.
enum Guard {
    None,
    Child {
        child: Child,
        _dir: tempfile::TempDir,
    },
    Router(Box<RouterProcess>),
    Envoy {
        envoy: Box<Envoy>,
        _dir: tempfile::TempDir,
    },
}

impl Running {
    /// The router's log so far (empty for the other peers, whose logs stay in
    /// their directories).
    pub fn log(&self) -> String {
        match &self._guard {
            Guard::Router(router) => router.process.log(),
            _ => String::new(),
        }
    }

    /// The process serving the peer (nginx's master, whose workers are its
    /// children), if it is a process of its own.
    pub fn pid(&self) -> Option<u32> {
        match &self._guard {
            Guard::None => None,
            Guard::Child { child, .. } => Some(child.id()),
            Guard::Router(router) => Some(router.process.pid()),
            Guard::Envoy { envoy, .. } => Some(envoy.pid()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Guard::Child { child, .. } = &mut self._guard {
            integration_tests::process::stop(child, "TERM", std::time::Duration::from_secs(5));
        }
    }
}

fn render(file: &str, replacements: &[(&str, String)]) -> String {
    let path = integration_tests::root().join("bench/peers").join(file);
    let mut text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "{file}: no {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// An `alpn-router` process with a fresh certificate.
pub struct RouterProcess {
    /// The process; its log is kept.
    pub process: Logged,
    /// Its certificate (for `envoy.test`, `localhost`, `127.0.0.1`).
    pub cert: ServerCert,
    /// Its direct TLS listener.
    pub direct: SocketAddr,
    /// Its upgrade listener, if `listeners` has one.
    pub upgrade: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl RouterProcess {
    /// Starts `router_bin` with the TOML `listeners` (which must name a direct
    /// listener), no connection cap to speak of, and one route per `(alpn, backend)`.
    pub fn start(router_bin: &Path, listeners: &str, routes: &[(&str, SocketAddr)]) -> Self {
        let routes: String = routes
            .iter()
            .map(|(alpn, backend)| {
                format!("\n[[route]]\nalpn = \"{alpn}\"\nbackend = \"{backend}\"\n")
            })
            .collect();
        Self::start_with_routes(router_bin, listeners, &routes)
    }

    /// [`RouterProcess::start`] with the routes' TOML as given.
    pub fn start_with_routes(router_bin: &Path, listeners: &str, routes: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = ServerCert::generate(dir.path());
        let mut config = format!(
            "{listeners}\n[limits]\nmax_connections = 100000\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.pem.display(),
            cert.key.display()
        );
        config += routes;
        let file: PathBuf = dir.path().join("router.toml");
        fs::write(&file, config).unwrap();
        let mut process = Logged::spawn(
            Command::new(router_bin)
                .args(["serve", "--config"])
                .arg(&file)
                .env("RUST_LOG", "info"),
        );
        let upgrade = listeners
            .contains("[upgrade]")
            .then(|| process.address_after("upgrade listener on "));
        let direct = process.address_after("direct listener on ");
        RouterProcess {
            process,
            cert,
            direct,
            upgrade,
            _dir: dir,
        }
    }
}

/// Starts `subject` in front of `backend`.
pub fn start(subject: &Subject, backend: SocketAddr) -> Running {
    let (peer, name, router_bin) = (subject.peer, subject.name.clone(), &subject.router_bin);
    match peer {
        Peer::RawTcp => Running {
            peer,
            name,
            target: Target {
                addr: backend,
                cert: None,
                alpn: None,
            },
            _guard: Guard::None,
        },
        Peer::Router => {
            let router = RouterProcess::start(
                router_bin,
                "[direct]\nlisten = \"127.0.0.1:0\"\n",
                &[("bench", backend)],
            );
            Running {
                peer,
                name,
                target: Target {
                    addr: router.direct,
                    cert: Some(router.cert.der()),
                    alpn: Some("bench"),
                },
                _guard: Guard::Router(Box::new(router)),
            }
        }
        Peer::NginxStream | Peer::Haproxy => {
            let (child, addr, cert, dir) = spawn_on_free_port(peer.name(), |port, dir, cert| {
                let run = ("/run/bench", dir.display().to_string());
                let listen = ("127.0.0.1:9443", format!("127.0.0.1:{port}"));
                let upstream = ("127.0.0.1:7000", backend.to_string());
                if peer == Peer::NginxStream {
                    let pem = ("/etc/bench/tls/server.pem", cert.pem.display().to_string());
                    let key = ("/etc/bench/tls/server.key", cert.key.display().to_string());
                    nginx_command(
                        dir,
                        &render("nginx-stream.conf", &[run, listen, upstream, pem, key]),
                    )
                } else {
                    let combined = (
                        "/etc/bench/tls/combined.pem",
                        cert.combined(dir).display().to_string(),
                    );
                    haproxy_command(
                        dir,
                        &render("haproxy-tcp.cfg", &[run, listen, upstream, combined]),
                    )
                }
            });
            Running {
                peer,
                name,
                target: Target {
                    addr,
                    cert: Some(cert.der()),
                    alpn: None,
                },
                _guard: Guard::Child { child, _dir: dir },
            }
        }
        Peer::Envoy => {
            let dir = tempfile::tempdir().unwrap();
            let cert = ServerCert::generate(dir.path());
            let replacements = [
                ("/etc/bench/tls/server.pem", cert.pem.display().to_string()),
                ("/etc/bench/tls/server.key", cert.key.display().to_string()),
                ("port_value: 9443}", "port_value: 0}".into()),
                (
                    "port_value: 7000}",
                    format!("port_value: {}}}", backend.port()),
                ),
            ];
            let envoy = Envoy::start(&Bootstrap::from_text(
                "envoy-tcp.yaml",
                render("envoy-tcp.yaml", &replacements),
            ));
            let addr = envoy.listener("tls");
            Running {
                peer,
                name,
                target: Target {
                    addr,
                    cert: Some(cert.der()),
                    alpn: None,
                },
                _guard: Guard::Envoy {
                    envoy: Box::new(envoy),
                    _dir: dir,
                },
            }
        }
    }
}
