//! Real backends from Debian for the end-to-end tests: PostgreSQL and Redis, each
//! started on a loopback port of its own in a temporary directory and stopped
//! when dropped.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to start.
const START: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(addr: SocketAddr, what: &str, child: &mut Option<&mut Child>) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Some(c) = child.as_mut() {
            assert!(
                c.try_wait().unwrap().is_none(),
                "{what} exited while starting"
            );
        }
        assert!(
            started.elapsed() < START,
            "{what} not listening on {addr} after {START:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The PostgreSQL server binaries (`initdb`, `pg_ctl`), newest version first.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is missing: run `make test`, which installs it")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL program as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root), as ourselves otherwise. `setpriv` execs
/// the program, so the child is the program itself and stops with us.
fn pg_command(tool: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

/// A PostgreSQL server with trust authentication for user `postgres` on loopback.
pub struct Postgres {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Whether the server binaries are installed.
    pub fn available() -> bool {
        fs::read_dir("/usr/lib/postgresql")
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join("bin/initdb").exists())))
    }

    /// Creates a cluster in a temporary directory and starts it.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown the PostgreSQL directory");
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = fs::File::create(dir.path().join("postgres.log")).unwrap();
        let mut child = pg_command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "PostgreSQL", &mut Some(&mut child));
        Postgres {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        crate::process::stop(&mut self.child, "INT", Duration::from_secs(5));
    }
}

/// A Redis server without persistence.
pub struct Redis {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Whether `redis-server` is installed.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok()
    }

    /// Starts `redis-server` on a loopback port.
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: run `make test`, which installs it");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "Redis", &mut Some(&mut child));
        Redis {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
