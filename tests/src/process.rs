//! A child process whose stderr (its log) is collected, for tests and the demo
//! to wait for what a program says and to read back addresses it bound.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a wait for a log line may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A child process whose stderr (its log) is collected; killed when dropped.
pub struct Logged {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Logged {
    /// Spawns `command` with stderr captured (and stdin/stdout closed).
    pub fn spawn(command: &mut Command) -> Logged {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the program");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Logged { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the program exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no log line {needle:?} within {DEADLINE:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address in a log line `... <prefix><address> ...`.
    pub fn address_after(&mut self, prefix: &str) -> SocketAddr {
        self.address_on_line(prefix, prefix)
    }

    /// The address after `prefix` on the first log line containing `needle`.
    pub fn address_on_line(&mut self, needle: &str, prefix: &str) -> SocketAddr {
        let line = self.wait_for(needle);
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Sends a signal (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; returns whether it exited cleanly.
    pub fn wait_exit(&mut self) -> bool {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                started.elapsed() < DEADLINE,
                "still running:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops `child` the way it asks to be stopped: `signal` (nginx's master takes
/// its workers down on `TERM`; PostgreSQL's fast shutdown is `INT`), then
/// SIGKILL if it is still running after `grace`. A bare SIGKILL to nginx's
/// master would leave its workers running.
pub fn stop(child: &mut Child, signal: &str, grace: Duration) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let started = Instant::now();
    while started.elapsed() < grace {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
