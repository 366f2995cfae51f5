//! A real Envoy process started from one of the shipped bootstraps, with the
//! test's ports and paths written in. Listeners and admin bind port 0; the bound
//! ports are read back from the admin interface. Dropping it kills the process.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::http;

/// How long Envoy may take to start (it compiles the Wasm module first).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The text of a shipped bootstrap, being adapted for a test.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    name: String,
    text: String,
}

impl Bootstrap {
    /// A bootstrap from its text (`name` names the file written for Envoy).
    pub fn from_text(name: &str, text: String) -> Bootstrap {
        Bootstrap {
            name: name.into(),
            text,
        }
    }

    /// The admin interface on port 0, whatever port the file gives it.
    fn admin_on_port_zero(mut self) -> Bootstrap {
        let admin = self.text.find("admin:").expect("an admin block");
        let at = admin
            + self.text[admin..]
                .find("port_value: ")
                .expect("an admin port")
            + "port_value: ".len();
        let end = at + self.text[at..].find('}').expect("port_value: N}");
        self.text.replace_range(at..end, "0");
        self
    }

    /// Loads `envoy/<name>` and points it at the freshly built filter.
    pub fn shipped(name: &str) -> Bootstrap {
        let path = crate::root().join("envoy").join(name);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Bootstrap {
            name: name.into(),
            text,
        }
        .replace(
            "/etc/envoy/alpn_upgrade_filter.wasm",
            &crate::filter_wasm().display().to_string(),
        )
    }

    /// Replaces `from`, which must occur exactly once, so that a bootstrap that
    /// changed shape fails loudly instead of testing something else.
    pub fn replace(mut self, from: &str, to: &str) -> Bootstrap {
        let n = self.text.matches(from).count();
        assert_eq!(
            n, 1,
            "{}: expected {from:?} once, found it {n} times",
            self.name
        );
        self.text = self.text.replacen(from, to, 1);
        self
    }

    /// Rewrites `port_value: <old>` (which must occur once) to `new`.
    pub fn port(self, old: u16, new: u16) -> Bootstrap {
        self.replace(
            &format!("port_value: {old}}}"),
            &format!("port_value: {new}}}"),
        )
    }

    /// Points the TLS certificate paths at `cert`.
    pub fn certificate(self, cert: &crate::tls::ServerCert) -> Bootstrap {
        self.replace("/etc/envoy/tls/server.pem", &cert.pem.display().to_string())
            .replace("/etc/envoy/tls/server.key", &cert.key.display().to_string())
    }

    /// Adds what a Pod's Envoy has in front of the router (the Helm chart's
    /// shape) to a bootstrap holding fragment.yaml: the `health_check` filter
    /// answering `path` itself (200, or 503 once `POST /healthcheck/fail` was
    /// sent or while the router is not ready), and an active health check of
    /// the router's `/readyz` on its metrics port `metrics_port`, which
    /// `cluster_min_healthy_percentages` makes part of that answer.
    pub fn with_health_check(self, path: &str, metrics_port: u16) -> Bootstrap {
        let filter = format!(
            r#"          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers:
              - name: ":path"
                string_match: {{exact: {path}}}
              cluster_min_healthy_percentages:
                alpn_router: {{value: 100}}
"#
        );
        let active = "    health_checks:
    - timeout: 2s
      interval: 1s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {path: /readyz}
    load_assignment:
      cluster_name: alpn_router
";
        self.replace("          http_filters:\n", &filter)
            .replace(
                "    load_assignment:\n      cluster_name: alpn_router\n",
                active,
            )
            .replace(
                "port_value: 9001}\n",
                &format!(
                    "port_value: 9001}}\n            health_check_config: {{port_value: {metrics_port}}}\n"
                ),
            )
    }

    /// The adapted text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Writes the bootstrap into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(&self.name);
        fs::write(&path, &self.text).expect("write the bootstrap");
        path
    }
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// The admin interface.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    /// Its hot restart epoch (0 when started on its own).
    epoch: u32,
}

impl Envoy {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts Envoy on `bootstrap` (admin on port 0) and waits until it serves.
    pub fn start(bootstrap: &Bootstrap) -> Envoy {
        Envoy::start_with(bootstrap, &[])
    }

    /// The same with `extra` command-line arguments (such as `--drain-time-s`).
    pub fn start_with(bootstrap: &Bootstrap, extra: &[&str]) -> Envoy {
        let dir = tempfile::tempdir().expect("temporary directory");
        let base_id = dir.path().join("base-id");
        let identity = [
            "--use-dynamic-base-id".into(),
            "--base-id-path".into(),
            base_id.display().to_string(),
        ];
        Self::serve(bootstrap, dir, &identity, 0, extra)
    }

    /// Envoy's graceful restart (hot restart): starts the next epoch on
    /// `bootstrap`, which takes over this one's listening sockets (so the
    /// bootstrap must name the ports this one bound, not port 0), and waits
    /// until it serves. This one then drains its listeners for `drain` and
    /// exits after `parent_shutdown`; its live connections go on until then.
    pub fn hot_restart(
        &self,
        bootstrap: &Bootstrap,
        drain: Duration,
        parent_shutdown: Duration,
    ) -> Envoy {
        let base_id = fs::read_to_string(self.dir.path().join("base-id"))
            .expect("the first epoch wrote its base id");
        let dir = tempfile::tempdir().expect("temporary directory");
        let identity = [
            "--base-id".into(),
            base_id.trim().to_string(),
            "--restart-epoch".into(),
            (self.epoch + 1).to_string(),
            "--drain-time-s".into(),
            drain.as_secs().to_string(),
            "--parent-shutdown-time-s".into(),
            parent_shutdown.as_secs().to_string(),
        ];
        // The next epoch finds the base id where a later one looks for it.
        fs::write(dir.path().join("base-id"), &base_id).expect("write the base id");
        Self::serve(bootstrap, dir, &identity, self.epoch + 1, &[])
    }

    fn serve(
        bootstrap: &Bootstrap,
        dir: tempfile::TempDir,
        identity: &[String],
        epoch: u32,
        extra: &[&str],
    ) -> Envoy {
        let bootstrap = bootstrap.clone().admin_on_port_zero();
        let child = spawn(&bootstrap, dir.path(), identity, extra);
        let admin_file = dir.path().join("admin.txt");
        let started = Instant::now();
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:1".parse().unwrap(),
            dir,
            epoch,
        };
        loop {
            if let Some(status) = envoy.child.try_wait().expect("poll envoy") {
                panic!(
                    "envoy exited with {status} while starting:\n{}",
                    envoy.log()
                );
            }
            if let Some(addr) = fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = addr;
                if ready(addr) {
                    return envoy;
                }
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "envoy not ready after {START_DEADLINE:?}:\n{}",
                envoy.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops Envoy with SIGTERM (it exits at once, cutting its connections)
    /// and waits for it to exit.
    pub fn terminate(&mut self) {
        crate::process::stop(&mut self.child, "TERM", Duration::from_secs(20));
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs Envoy on `bootstrap` with `extra` arguments until it exits by itself
    /// (a refused configuration, or `--mode validate`); returns status and log.
    pub fn run_to_exit(bootstrap: &Bootstrap, extra: &[&str]) -> (ExitStatus, String) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let identity = ["--use-dynamic-base-id".to_string()];
        let mut child = spawn(
            &bootstrap.clone().admin_on_port_zero(),
            dir.path(),
            &identity,
            extra,
        );
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("poll envoy") {
                return (
                    status,
                    fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default(),
                );
            }
            if started.elapsed() > START_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("envoy still running after {START_DEADLINE:?}; it should have exited");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address a listener is bound to (the bootstrap gave it port 0).
    pub fn listener(&self, name: &str) -> SocketAddr {
        let listeners = http::get(self.admin, "/listeners?format=json");
        let json: serde_json::Value =
            serde_json::from_slice(&listeners.body).expect("listeners JSON");
        let status = json["listener_statuses"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["name"] == name))
            .unwrap_or_else(|| panic!("no listener {name:?} in {json}"));
        let sock = &status["local_address"]["socket_address"];
        let port = sock["port_value"].as_u64().expect("bound port") as u16;
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The value of counter `name` on `/stats`.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let stats = http::get(self.admin, &format!("/stats?filter=^{name}$")).text();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the admin interface at `addr` says Envoy is ready; `false` while
/// it cannot answer yet: its port is bound (and its address written) before
/// the server runs, which on a loaded machine can take longer than one
/// request's deadline.
fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200")
}

/// Envoy on `bootstrap` in `dir`; `identity` says which shared memory it uses
/// (`--use-dynamic-base-id`, or a base id and restart epoch for a hot restart).
fn spawn(bootstrap: &Bootstrap, dir: &Path, identity: &[String], extra: &[&str]) -> Child {
    let config = bootstrap.write(dir);
    Command::new(crate::envoy_bin())
        .arg("-c")
        .arg(&config)
        .args(identity)
        .args([
            "--concurrency",
            "2",
            "-l",
            "info",
            "--component-log-level",
            "wasm:debug",
        ])
        .arg("--admin-address-path")
        .arg(dir.join("admin.txt"))
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Envoy logs to stderr (`--mode validate` ignores --log-path).
        .stderr(fs::File::create(dir.join("envoy.log")).expect("create the log file"))
        .spawn()
        .expect("start envoy")
}
