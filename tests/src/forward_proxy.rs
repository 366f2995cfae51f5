//! A real forward proxy on loopback: tinyproxy from Debian, with a configuration
//! written by the test (Basic authentication, the ports `CONNECT` may reach),
//! logging every `CONNECT` it is asked for so tests can see what went through it.

use std::fs;
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use crate::load_balancer::spawn_on_free_port;

/// How the proxy is set up.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Basic authentication required (user, password); none when `None`.
    pub auth: Option<(String, String)>,
    /// The only ports `CONNECT` may reach (tinyproxy's `ConnectPort`); any
    /// port when empty.
    pub connect_ports: Vec<u16>,
}

/// A running tinyproxy.
pub struct ForwardProxy {
    child: Child,
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl ForwardProxy {
    /// Starts tinyproxy on a free port of 127.0.0.1 with `settings`.
    pub fn start(settings: &Settings) -> ForwardProxy {
        let (child, addr, _, dir) = spawn_on_free_port("tinyproxy", |port, dir, _| {
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 100\nAllow 127.0.0.1\n\
                 LogLevel Connect\nDisableViaHeader Yes\nLogFile \"{}\"\n",
                dir.join("tinyproxy.log").display()
            );
            if let Some((user, password)) = &settings.auth {
                conf.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            for p in &settings.connect_ports {
                conf.push_str(&format!("ConnectPort {p}\n"));
            }
            let path = dir.join("tinyproxy.conf");
            fs::write(&path, conf).unwrap();
            let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or_else(|| {
                    panic!("tinyproxy is missing: run `make test`, which installs it")
                });
            let mut c = std::process::Command::new(bin);
            c.arg("-d").arg("-c").arg(path);
            c
        });
        ForwardProxy { child, addr, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// How many times it was asked to `CONNECT` to `target` (`HOST:PORT`).
    pub fn connects_to(&self, target: &str) -> usize {
        let request = format!("CONNECT {target} HTTP/1.1");
        self.log().lines().filter(|l| l.contains(&request)).count()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        crate::process::stop(&mut self.child, "TERM", Duration::from_secs(5));
    }
}
