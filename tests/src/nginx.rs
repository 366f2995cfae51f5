//! nginx from Debian as a stand-in for an AWS ALB: it terminates TLS with a
//! self-signed certificate, negotiates only `http/1.1` (no ALPN or SNI
//! passthrough, no client certificates), forwards upgrades, appends the client
//! to `X-Forwarded-For`, and has an idle timeout.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::tls::ServerCert;

/// A running nginx.
pub struct Nginx {
    child: Child,
    /// Where it listens (TLS).
    pub addr: SocketAddr,
    /// Its certificate (clients pass it as the load balancer's CA).
    pub cert: ServerCert,
    dir: tempfile::TempDir,
}

fn config(
    dir: &std::path::Path,
    port: u16,
    upstream: SocketAddr,
    cert: &ServerCert,
    idle: Duration,
) -> String {
    let d = dir.display();
    let idle = idle.as_secs().max(1);
    format!(
        r#"
user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {pem};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        # Like an ALB: an idle connection is closed after this long.
        proxy_read_timeout {idle}s;
        proxy_send_timeout {idle}s;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"#,
        pem = cert.pem.display(),
        key = cert.key.display(),
    )
}

impl Nginx {
    /// Starts nginx in front of `upstream` (Envoy's HTTP listener).
    pub fn start(upstream: SocketAddr, idle: Duration) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is missing: run `make test`, which installs it");
        // nginx cannot report a port it chose itself, so a free one is picked
        // and the start retried if another process took it meanwhile.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("tmp")).unwrap();
            let cert = ServerCert::generate(dir.path());
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.path().join("nginx.conf");
            fs::write(&conf, config(dir.path(), port, upstream, &cert, idle)).unwrap();
            let mut child = Command::new(nginx)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if TcpStream::connect(addr).is_ok() {
                    return Nginx {
                        child,
                        addr,
                        cert,
                        dir,
                    };
                }
                thread::sleep(Duration::from_millis(50));
            }
            let log = fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                log.contains("Address already in use"),
                "nginx did not start:\n{log}"
            );
        }
        panic!("nginx found no free port in 5 tries");
    }

    /// nginx's error log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
