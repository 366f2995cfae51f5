//! The ALB stand-ins of `deploy/load-balancers/` (nginx, HAProxy, Envoy), started
//! from those very files with the test's ports, paths, certificate and idle
//! timeout written in. Each terminates TLS with a self-signed certificate,
//! offers only http/1.1, forwards upgrades and appends X-Forwarded-For.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::envoy::{Bootstrap, Envoy};
use crate::tls::ServerCert;

/// Which load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nginx from Debian.
    Nginx,
    /// HAProxy from Debian.
    Haproxy,
    /// Envoy as a plain L7 proxy.
    Envoy,
}

impl Kind {
    /// All of them.
    pub const ALL: [Kind; 3] = [Kind::Nginx, Kind::Haproxy, Kind::Envoy];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Envoy => "envoy",
        }
    }
}

enum Process {
    Child(Child),
    /// Kept only to be dropped (which stops Envoy) with the load balancer.
    Envoy {
        _running: Box<Envoy>,
    },
}

/// A running load balancer.
pub struct LoadBalancer {
    process: Process,
    /// Which one.
    pub kind: Kind,
    /// Where it listens (TLS).
    pub addr: SocketAddr,
    /// Its certificate (clients pass it as the load balancer's CA).
    pub cert: ServerCert,
    dir: tempfile::TempDir,
}

/// A configuration file from `deploy/load-balancers/` with values replaced;
/// each replacement must match exactly `count` times.
fn render(file: &str, replacements: &[(&str, String, usize)]) -> String {
    let path = crate::root().join("deploy/load-balancers").join(file);
    let mut text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to, count) in replacements {
        let n = text.matches(from).count();
        assert_eq!(
            n, *count,
            "{file}: expected {from:?} {count} times, found {n}"
        );
        text = text.replace(from, to);
    }
    text
}

fn binary(candidates: &[&str], package: &str) -> String {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| panic!("{package} is missing: run `make test`, which installs it"))
}

impl LoadBalancer {
    /// The process id of nginx's master or of HAProxy (`None` for Envoy, whose
    /// process the harness's `Envoy` owns).
    pub fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Child(child) => Some(child.id()),
            Process::Envoy { .. } => None,
        }
    }

    /// nginx's reload (`nginx -s reload` sends its master SIGHUP): new workers
    /// take the configuration, the old ones finish their live connections.
    /// Returns once a new worker has started.
    pub fn reload(&self) {
        assert_eq!(self.kind, Kind::Nginx, "reload is nginx's");
        let log = self.dir.path().join("nginx-error.log");
        let started = |log: &Path| {
            fs::read_to_string(log)
                .unwrap_or_default()
                .matches("start worker process")
                .count()
        };
        let before = started(&log);
        let ok = Command::new(binary(&["/usr/sbin/nginx"], "nginx"))
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(self.dir.path())
            .args(["-s", "reload"])
            .status()
            .unwrap();
        assert!(ok.success(), "nginx -s reload failed");
        let since = Instant::now();
        while started(&log) <= before {
            assert!(
                since.elapsed() < crate::process::DEADLINE,
                "nginx started no new worker:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops nginx (SIGTERM: a fast shutdown, which closes every connection),
    /// then starts it again on the same port and configuration; returns once
    /// it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops nginx (SIGTERM: a fast shutdown, which closes every connection).
    pub fn stop(&mut self) {
        assert_eq!(self.kind, Kind::Nginx, "restarts are nginx's");
        if let Process::Child(child) = &mut self.process {
            crate::process::stop(child, "TERM", Duration::from_secs(10));
        }
    }

    /// Starts a stopped nginx again on the same port and configuration;
    /// returns once it accepts connections.
    pub fn start_again(&mut self) {
        assert_eq!(self.kind, Kind::Nginx, "restarts are nginx's");
        let conf = fs::read_to_string(self.dir.path().join("nginx.conf")).unwrap();
        let log = fs::File::create(self.dir.path().join("stderr.log")).unwrap();
        let child = nginx_command(self.dir.path(), &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nginx");
        self.process = Process::Child(child);
        let since = Instant::now();
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                since.elapsed() < crate::process::DEADLINE,
                "nginx did not listen again on {}",
                self.addr
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `kind` in front of `upstream` (Envoy's HTTP listener) with an idle timeout.
    pub fn start(kind: Kind, upstream: SocketAddr, idle: Duration) -> LoadBalancer {
        Self::start_with_rule(kind, upstream, idle, "")
    }

    /// nginx as [`LoadBalancer::start`] starts it, with `rule` (nginx
    /// directives) at the top of its only `location`: a WAF or firewall in
    /// front, such as `if ($http_upgrade ~* websocket) { return 403; }`.
    pub fn nginx_with_rule(upstream: SocketAddr, idle: Duration, rule: &str) -> LoadBalancer {
        Self::start_with_rule(Kind::Nginx, upstream, idle, rule)
    }

    fn start_with_rule(
        kind: Kind,
        upstream: SocketAddr,
        idle: Duration,
        rule: &str,
    ) -> LoadBalancer {
        assert!(
            rule.is_empty() || kind == Kind::Nginx,
            "rules are nginx directives"
        );
        let idle = format!("{}s", idle.as_secs().max(1));
        if kind == Kind::Envoy {
            let dir = tempfile::tempdir().unwrap();
            let cert = ServerCert::generate(dir.path());
            let text = render(
                "envoy-alb.yaml",
                &[
                    ("port_value: 8443}", "port_value: 0}".into(), 1),
                    (
                        "port_value: 8080}",
                        format!("port_value: {}}}", upstream.port()),
                        1,
                    ),
                    ("/etc/alb/tls/alb.pem", cert.pem.display().to_string(), 1),
                    ("/etc/alb/tls/alb.key", cert.key.display().to_string(), 1),
                    ("60s", idle, 2),
                ],
            );
            let envoy = Envoy::start(&Bootstrap::from_text("envoy-alb.yaml", text));
            let addr = envoy.listener("alb");
            return LoadBalancer {
                process: Process::Envoy {
                    _running: Box::new(envoy),
                },
                kind,
                addr,
                cert,
                dir,
            };
        }
        let (child, addr, cert, dir) = spawn_on_free_port(kind.name(), |port, dir, cert| {
            let listen = format!("127.0.0.1:{port}");
            let run = dir.display().to_string();
            match kind {
                Kind::Nginx => {
                    let text = render(
                        "nginx.conf",
                        &[
                            ("/run/alb", run, 8),
                            ("listen 8443 ssl;", format!("listen {listen} ssl;"), 1),
                            ("/etc/alb/tls/alb.pem", cert.pem.display().to_string(), 1),
                            ("/etc/alb/tls/alb.key", cert.key.display().to_string(), 1),
                            ("http://127.0.0.1:8080", format!("http://{upstream}"), 1),
                            ("60s", idle.clone(), 2),
                            ("location / {", format!("location / {{\n{rule}"), 1),
                        ],
                    );
                    nginx_command(dir, &text)
                }
                Kind::Haproxy => {
                    let text = render(
                        "haproxy.cfg",
                        &[
                            ("/run/alb", run, 1),
                            ("127.0.0.1:8443", listen, 1),
                            (
                                "/etc/alb/tls/alb-with-key.pem",
                                cert.combined(dir).display().to_string(),
                                1,
                            ),
                            ("127.0.0.1:8080", upstream.to_string(), 1),
                            ("60s", idle.clone(), 3),
                        ],
                    );
                    haproxy_command(dir, &text)
                }
                Kind::Envoy => unreachable!("started above"),
            }
        });
        LoadBalancer {
            process: Process::Child(child),
            kind,
            addr,
            cert,
            dir,
        }
    }
}

/// nginx (from Debian) running configuration `text`, written into `dir`.
pub fn nginx_command(dir: &Path, text: &str) -> Command {
    let conf = dir.join("nginx.conf");
    fs::write(&conf, text).unwrap();
    let mut c = Command::new(binary(&["/usr/sbin/nginx"], "nginx"));
    c.arg("-c").arg(&conf).arg("-p").arg(dir);
    c
}

/// HAProxy (from Debian) running configuration `text`, written into `dir`.
pub fn haproxy_command(dir: &Path, text: &str) -> Command {
    let conf = dir.join("haproxy.cfg");
    fs::write(&conf, text).unwrap();
    let mut c = Command::new(binary(&["/usr/sbin/haproxy"], "haproxy"));
    c.arg("-f").arg(&conf).arg("-db");
    c
}

/// Starts a server that cannot report a port it chose itself (nginx, HAProxy,
/// tinyproxy):
/// a free port is picked, `command_for(port, dir, cert)` builds the command, and
/// the start is retried if another process took the port meanwhile. Returns the
/// process, its address, its certificate and its directory.
pub fn spawn_on_free_port(
    name: &str,
    mut command_for: impl FnMut(u16, &Path, &ServerCert) -> Command,
) -> (Child, SocketAddr, ServerCert, tempfile::TempDir) {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let cert = ServerCert::generate(dir.path());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = command_for(port, dir.path(), &cert)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if TcpStream::connect(addr).is_ok() {
                return (child, addr, cert, dir);
            }
            thread::sleep(Duration::from_millis(50));
        }
        crate::process::stop(&mut child, "TERM", Duration::from_secs(5));
        let log = fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            + &fs::read_to_string(dir.path().join("nginx-error.log")).unwrap_or_default()
            + &fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        assert!(
            log.contains("Address already in use")
                || log.contains("cannot bind")
                || log.contains("Could not create listening sockets"),
            "{name} did not start:\n{log}"
        );
    }
    panic!("{name} found no free port in 5 tries");
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        if let Process::Child(child) = &mut self.process {
            crate::process::stop(child, "TERM", Duration::from_secs(5));
        }
        // A failed test shows why the load balancer ended connections
        // (an idle timeout, an upstream reset), which its own output is not.
        if thread::panicking() {
            for name in ["nginx-error.log", "error.log", "stderr.log"] {
                let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let notable: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("[notice]") && !l.trim().is_empty())
                    .collect();
                if !notable.is_empty() {
                    let from = notable.len().saturating_sub(40);
                    eprintln!(
                        "{} {name} (last {} lines):\n{}",
                        self.kind.name(),
                        notable.len() - from,
                        notable[from..].join("\n")
                    );
                }
            }
        }
    }
}
