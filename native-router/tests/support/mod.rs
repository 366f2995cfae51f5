//! Harness for the router's end-to-end tests: a PKI made with rcgen at test time,
//! the router in this process (the library's `run` on listeners the test binds
//! on port 0, its log captured) or the real `alpn-router` binary (for signals,
//! reload, `check` and process limits; addresses read from its log), backends on
//! loopback, and a client that tunnels through any framing.

#![allow(dead_code)]

pub mod load;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

pub use integration_tests::process::Logged;
use std::thread;
use std::time::Duration;

use alpn_protocol::framing::{Framing, Io, Subprotocol};
use alpn_router::{Config, Listeners, Router};
use alpn_tunnel as client;
use alpn_tunnel::pem::CertKey;
use alpn_tunnel::tls::client_config;
use integration_tests::tls::{self, ca};
use rcgen::{CertifiedIssuer, KeyPair};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener as AsyncListener, TcpStream as AsyncTcp};
use tokio::sync::oneshot;

pub use integration_tests::process::DEADLINE;

/// Every way to reach the router: its direct port (`None`) and each framing.
pub const FRAMINGS: [Option<Framing>; 5] = [
    None,
    Some(Framing::Alpn),
    Some(Framing::AlpnPing),
    Some(Framing::WebSocket(Subprotocol::Alpn)),
    Some(Framing::WebSocket(Subprotocol::AlpnPing)),
];

/// How a test names a way of reaching the router.
pub fn name(f: Option<Framing>) -> &'static str {
    f.map_or("direct", Framing::name)
}

/// Where a router listens, in this process or as the binary.
pub trait Listening {
    /// The upgrade listener.
    fn upgrade(&self) -> SocketAddr;
    /// The direct TLS listener.
    fn direct(&self) -> SocketAddr;
}

/// The listener for a way of reaching the router.
pub fn addr_for(router: &impl Listening, f: Option<Framing>) -> SocketAddr {
    if f.is_some() {
        router.upgrade()
    } else {
        router.direct()
    }
}

/// Certificates for a test: the router's, a client's, and a stranger's.
pub struct Pki {
    /// Holds the PEM files the router's configuration names.
    pub dir: tempfile::TempDir,
    /// The CA that signed the router's certificate (clients trust it).
    pub server_ca: CertificateDer<'static>,
    /// A client certificate signed by `clients-ca.pem`.
    pub client: CertKey,
    /// A client certificate from another CA.
    pub stranger: CertKey,
}

fn leaf(
    names: &[&str],
    cn: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (String, String, CertKey) {
    let l = tls::leaf(names, cn, issuer);
    (
        l.pem,
        l.key_pem,
        CertKey {
            chain: vec![l.der],
            key: l.key,
        },
    )
}

impl Pki {
    /// A fresh PKI, written as `server.pem`, `server.key`, `router-ca.pem`,
    /// `clients-ca.pem`, `client.pem`, `client.key`.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = ca("router test CA");
        let (pem, key, _) = leaf(
            &["router.test", "db.router.test"],
            "router.test",
            &server_ca,
        );
        std::fs::write(dir.path().join("server.pem"), pem).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("router-ca.pem"), server_ca.pem()).unwrap();
        let clients_ca = ca("clients CA");
        std::fs::write(dir.path().join("clients-ca.pem"), clients_ca.pem()).unwrap();
        let (client_pem, client_key, client) = leaf(&[], "alice", &clients_ca);
        std::fs::write(dir.path().join("client.pem"), client_pem).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key).unwrap();
        let (_, _, stranger) = leaf(&[], "mallory", &ca("another CA"));
        Pki {
            dir,
            server_ca: server_ca.der().clone(),
            client,
            stranger,
        }
    }

    /// A path inside the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A router configuration with all three listeners on port 0 and `routes`.
pub fn config(routes: &str) -> String {
    format!(
        r#"
[upgrade]
listen = "127.0.0.1:0"
trusted_peers = ["127.0.0.1/32"]
ping_interval = "30s"

[direct]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"

[limits]
header_timeout = "2s"
handshake_timeout = "5s"
connect_timeout = "2s"
drain_grace = "10s"

[tls]
cert = "server.pem"
key = "server.key"

{routes}
"#
    )
}

/// The router library serving a configuration in this process, as the binary
/// would (the same text log at debug level), minus signals and process limits:
/// the test binds the listeners on 127.0.0.1:0 and holds the shutdown that is
/// handed to [`alpn_router::run`]. The router runs on a thread of its own, so
/// its log is its own and blocking test code cannot stall it. Dropping it
/// shuts the router down (it drains as at SIGTERM) and waits for `run` to
/// return.
pub struct InProcessRouter {
    /// The upgrade listener.
    pub upgrade: SocketAddr,
    /// The direct TLS listener.
    pub direct: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    log: Log,
    /// Sending on it, or dropping it, is the router's shutdown.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InProcessRouter {
    /// Writes `toml` as `router.toml` into `dir` (paths in it are relative to
    /// it) and serves it on fresh port-0 listeners for each listener it names.
    pub fn start(dir: &Path, toml: &str) -> InProcessRouter {
        let file = dir.join("router.toml");
        std::fs::write(&file, toml).unwrap();
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let bind = |named: bool, what: &str| {
            assert!(named, "the configuration has no {what} listener");
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let upgrade = bind(config.upgrade.is_some(), "upgrade");
        let direct = bind(config.direct.is_some(), "direct");
        let metrics = bind(config.metrics.is_some(), "metrics");
        let addresses = (
            upgrade.local_addr().unwrap(),
            direct.local_addr().unwrap(),
            metrics.local_addr().unwrap(),
        );
        let router = Router::new(config).unwrap();
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(log.clone())
            .finish();
        // The binary bridges the `log` crate's lines (the framings) too.
        let _ = tracing_log::LogTracer::init();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("router".into())
            .spawn(move || {
                // Every task of a current-thread runtime runs here: the
                // router's lines, and only they, reach this subscriber.
                let _logging = tracing::subscriber::set_default(subscriber);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listeners = Listeners {
                        upgrade: Some(AsyncListener::from_std(upgrade).unwrap()),
                        direct: Some(AsyncListener::from_std(direct).unwrap()),
                        metrics: Some(AsyncListener::from_std(metrics).unwrap()),
                    };
                    alpn_router::run(router, listeners, async {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })
            .unwrap();
        InProcessRouter {
            upgrade: addresses.0,
            direct: addresses.1,
            metrics: addresses.2,
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Everything the router logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let started = std::time::Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "the router stopped before logging {needle:?}:\n{}",
                self.log()
            );
            assert!(
                started.elapsed() < DEADLINE,
                "no log line {needle:?} within {DEADLINE:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A GET on the metrics listener.
    pub fn get(&self, path: &str) -> String {
        http_get(self.metrics, path).unwrap()
    }
}

impl Listening for InProcessRouter {
    fn upgrade(&self) -> SocketAddr {
        self.upgrade
    }

    fn direct(&self) -> SocketAddr {
        self.direct
    }
}

impl Drop for InProcessRouter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let ended = thread.join();
            if ended.is_err() && !thread::panicking() {
                panic!("the router panicked:\n{}", self.log());
            }
        }
    }
}

/// A log written by `tracing_subscriber::fmt`, kept in memory.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

/// The `alpn-router` binary serving a configuration: for what needs a process
/// (signals, reload, `check`, descriptor limits, the binary's own logging).
pub struct RouterProcess {
    process: Logged,
    config: PathBuf,
    /// The upgrade listener.
    pub upgrade: SocketAddr,
    /// The direct TLS listener.
    pub direct: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
}

impl RouterProcess {
    /// Writes `toml` as `router.toml` into `dir` and serves it.
    pub fn start(dir: &Path, toml: &str) -> RouterProcess {
        Self::start_limited(dir, toml, None)
    }

    /// The same, under `ulimit ULIMIT` (such as `-n 128`) when given.
    pub fn start_limited(dir: &Path, toml: &str, ulimit: Option<&str>) -> RouterProcess {
        let config = dir.join("router.toml");
        std::fs::write(&config, toml).unwrap();
        let mut command = router_command(ulimit);
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug");
        let mut process = Logged::spawn(&mut command);
        let upgrade = process.address_after("upgrade listener on ");
        let direct = process.address_after("direct listener on ");
        let metrics = process.address_after("metrics listener on ");
        RouterProcess {
            process,
            config,
            upgrade,
            direct,
            metrics,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything the router logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.process.wait_for(needle)
    }

    /// Sends a signal (`HUP`, `TERM`) to the router.
    pub fn signal(&self, name: &str) {
        self.process.signal(name)
    }

    /// Waits for the router to exit; returns whether it exited cleanly.
    pub fn wait_exit(&mut self) -> bool {
        self.process.wait_exit()
    }

    /// Replaces the configuration file (for a reload).
    pub fn rewrite(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
    }

    /// A GET on the metrics listener.
    pub fn get(&self, path: &str) -> String {
        http_get(self.metrics, path).unwrap()
    }
}

impl Listening for RouterProcess {
    fn upgrade(&self) -> SocketAddr {
        self.upgrade
    }

    fn direct(&self) -> SocketAddr {
        self.direct
    }
}

/// The `alpn-router` binary, run under `ulimit ULIMIT` when given (`-n N`
/// sets the soft and the hard limit, so the router cannot raise it; `-Sn N`
/// only the soft one).
pub fn router_command(ulimit: Option<&str>) -> Command {
    let bin = env!("CARGO_BIN_EXE_alpn-router");
    match ulimit {
        None => Command::new(bin),
        Some(args) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit {args} && exec \"$0\" \"$@\""), bin]);
            c
        }
    }
}

/// A GET of `path` from `addr`: the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(DEADLINE))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: r\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A backend on loopback: each connection runs `handler` in its own thread.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What the handlers recorded.
    pub seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Starts a backend whose handler gets the connection and a record to push to.
pub fn backend(handler: fn(TcpStream, &Mutex<Vec<Vec<u8>>>)) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let record = record.clone();
            thread::spawn(move || handler(conn, &record));
        }
    });
    Backend { addr, seen }
}

/// Echoes until EOF, then closes its write side.
pub fn echo(mut conn: TcpStream, _: &Mutex<Vec<Vec<u8>>>) {
    integration_tests::stubs::echo_until_eof(&mut conn);
}

/// Reads a PROXY v2 header, records it, then echoes.
pub fn proxy_then_echo(mut conn: TcpStream, seen: &Mutex<Vec<Vec<u8>>>) {
    let mut head = [0u8; 16];
    if conn.read_exact(&mut head).is_err() {
        return;
    }
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[14], head[15]]))];
    if conn.read_exact(&mut rest).is_err() {
        return;
    }
    let mut all = head.to_vec();
    all.extend(rest);
    seen.lock().unwrap().push(all);
    echo(conn, seen);
}

/// The source and destination in the PROXY v2 header `bytes` (one whole
/// header, as [`proxy_then_echo`] records it), read by `ppp`, a parser
/// independent of the router's encoder; `None` unless it is a PROXY command for
/// TCP over IPv4 or IPv6 that spans exactly `bytes`.
pub fn proxy_v2(bytes: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    use ppp::v2::{Addresses, Command, Header, Protocol};
    let header = Header::try_from(bytes).ok()?;
    if header.len() != bytes.len()
        || header.command != Command::Proxy
        || header.protocol != Protocol::Stream
    {
        return None;
    }
    match header.addresses {
        Addresses::IPv4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        Addresses::IPv6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        _ => None,
    }
}

/// Opens a tunnel to `alpns` through `framing` (or directly when `None`),
/// trusting the PKI's server CA; returns the stream and the negotiated ALPN.
pub async fn tunnel(
    pki: &Pki,
    addr: SocketAddr,
    framing: Option<Framing>,
    alpns: &[&str],
    cert: Option<&CertKey>,
) -> std::io::Result<(Box<dyn Io>, Option<String>)> {
    let tcp = AsyncTcp::connect(addr).await?;
    tunnel_over(pki, tcp, framing, alpns, cert).await
}

/// [`tunnel`] over a TCP connection the test made (to know its address).
pub async fn tunnel_over(
    pki: &Pki,
    tcp: AsyncTcp,
    framing: Option<Framing>,
    alpns: &[&str],
    cert: Option<&CertKey>,
) -> std::io::Result<(Box<dyn Io>, Option<String>)> {
    let config = client_config(std::slice::from_ref(&pki.server_ca), alpns, cert).unwrap();
    match framing {
        None => {
            let tls = client::inner_tls(tcp, config, "router.test").await?;
            let alpn = tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            Ok((Box::new(tls), alpn))
        }
        Some(f) => {
            let framed = client::upgrade(
                tcp,
                f,
                "router.test",
                "/connectionupgrade",
                &alpn_protocol::names::Names::default(),
                Duration::from_secs(30),
            )
            .await
            .map_err(std::io::Error::other)?;
            let tls = client::inner_tls(framed, config, "router.test").await?;
            let alpn = tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            Ok((Box::new(tls), alpn))
        }
    }
}

/// A TLS server configuration as the router would have it (the PKI's
/// `router.test` certificate), offering only `alpn`: for test servers that
/// stand in for the router.
pub fn router_server_config(pki: &Pki, alpn: &str) -> rustls::ServerConfig {
    let ck = client::pem::read_cert_key(&pki.path("server.pem"), &pki.path("server.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(client::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(ck.chain, ck.key)
        .unwrap();
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    config
}

/// A TLS echo backend for `backend.test`, its CA written to `dir/backend-ca.pem`.
/// It records each connection's handshake as `full` or `resumed` (in `seen`,
/// once the first bytes have come), so tests can see session resumption.
pub fn tls_echo_backend(dir: &Path) -> Backend {
    use rustls::{ServerConfig, ServerConnection, StreamOwned};
    let ca = ca("backend CA");
    std::fs::write(dir.join("backend-ca.pem"), ca.pem()).unwrap();
    let (_, _, ck) = leaf(&["backend.test"], "backend.test", &ca);
    let config = Arc::new(
        ServerConfig::builder_with_provider(client::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(ck.chain, ck.key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = seen.clone();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            let record = record.clone();
            thread::spawn(move || {
                let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
                let mut buf = vec![0u8; 16 * 1024];
                let mut first = true;
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if std::mem::take(&mut first) {
                                let kind = match tls.conn.handshake_kind() {
                                    Some(rustls::HandshakeKind::Resumed) => "resumed",
                                    _ => "full",
                                };
                                record.lock().unwrap().push(kind.into());
                            }
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    Backend { addr, seen }
}

/// Writes a certificate for `other.test` from a CA of its own into `dir`
/// (`other.pem`, `other.key`) and returns that CA.
pub fn other_cert(dir: &Path) -> CertificateDer<'static> {
    let ca = ca("other CA");
    let (pem, key, _) = leaf(&["other.test"], "other.test", &ca);
    std::fs::write(dir.join("other.pem"), pem).unwrap();
    std::fs::write(dir.join("other.key"), key).unwrap();
    ca.der().clone()
}

/// Sends `data` through an echo tunnel and reads everything back; returns how
/// many bytes came back and their SHA-1. Both directions are driven from this
/// one task, as a tunnel stream requires (TLS and the framings write from their
/// read side, so a second task would lose its wake-ups).
pub async fn echo_round_trip(
    stream: Box<dyn Io>,
    data: &[u8],
) -> std::io::Result<(usize, Vec<u8>)> {
    use sha1::Digest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let write = async {
        wr.write_all(data).await?;
        wr.shutdown().await
    };
    let read = async {
        let mut hash = sha1::Sha1::new();
        let mut total = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tokio::time::timeout(DEADLINE, rd.read(&mut buf))
                .await
                .map_err(std::io::Error::other)??;
            if n == 0 {
                return Ok::<_, std::io::Error>((total, hash.finalize().to_vec()));
            }
            hash.update(&buf[..n]);
            total += n;
        }
    };
    let (written, read) = tokio::join!(write, read);
    written?;
    read
}

/// Envoy as shipped (`behind-l7.yaml`, the filter included) in front of the
/// router's upgrade listener `upgrade`, with no web application behind it:
/// the server side most client tests put a load balancer stand-in in front of.
pub fn envoy_in_front(upgrade: SocketAddr) -> integration_tests::envoy::Envoy {
    integration_tests::envoy::Envoy::start(&envoy_bootstrap(upgrade, 0))
}

/// The bootstrap [`envoy_in_front`] starts, its `web` listener on port `web`
/// (0 for any; the bound port again for a restart in its place).
pub fn envoy_bootstrap(upgrade: SocketAddr, web: u16) -> integration_tests::envoy::Bootstrap {
    integration_tests::envoy::Bootstrap::shipped("behind-l7.yaml")
        .port(8080, web)
        .port(9001, upgrade.port())
        .port(8081, 1)
}
