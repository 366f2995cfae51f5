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

/// Runs a PostgreSQL tool as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root), as ourselves otherwise.
fn pg_command(tool: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

/// A PostgreSQL server with trust authentication for user `postgres` on loopback.
pub struct Postgres {
    /// Where it listens.
    pub addr: SocketAddr,
    data: PathBuf,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
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
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let out = pg_command(&bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-o", &options, "-l"])
            .arg(dir.path().join("postgres.log"))
            .arg("-D")
            .arg(&data)
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        let log = fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "PostgreSQL", &mut None);
        Postgres {
            addr,
            data,
            bin,
            _dir: dir,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
