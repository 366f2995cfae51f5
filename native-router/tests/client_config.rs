//! `alpn-tunnel up` and `check-config` with a configuration file, as real
//! processes against the real router (its direct port and its upgrade
//! listener): forwards carry bytes, a SIGHUP reload keeps what did not change
//! (and its live connections), drains what was removed, refuses a bad file;
//! errors name the key. The spawned processes get temporary XDG directories,
//! never the user's.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{backend, config, echo, Backend, Logged, Pki, RouterProcess, DEADLINE};

/// A router with routes `echo` and `pg` (which requires a client
/// certificate), both to an echo backend.
struct Setup {
    pki: Pki,
    router: RouterProcess,
    _echo: Backend,
    /// Stands in for the user's home: XDG_CONFIG_HOME and XDG_CACHE_HOME.
    xdg: tempfile::TempDir,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"echo\"\nbackend = \"{a}\"\n[[route]]\nalpn = \"pg\"\nbackend = \"{a}\"\nclient_ca = \"clients-ca.pem\"\n",
        a = echo_backend.addr
    );
    let router = RouterProcess::start(pki.dir.path(), &config(&routes));
    Setup {
        pki,
        router,
        _echo: echo_backend,
        xdg: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    /// Two servers: `direct` (the router's TLS port, with the client
    /// certificate) and `lb` (the upgrade listener, plain HTTP, WebSocket).
    /// Paths are relative to the file, which lives in the PKI directory.
    fn servers(&self) -> String {
        format!(
            r#"
[servers.direct]
url = "https://{direct}"
sni = "router.test"
ca = "router-ca.pem"
cert = "client.pem"
key = "client.key"
upgrade = "never"
timeout = "5s"

[servers.lb]
url = "http://{upgrade}"
sni = "router.test"
ca = "router-ca.pem"
upgrade = "websocket"
timeout = "5s"
"#,
            direct = self.router.direct,
            upgrade = self.router.upgrade
        )
    }

    /// Writes the configuration file and returns its path.
    fn write(&self, toml: &str) -> PathBuf {
        let path = self.pki.path("tunnels.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// `alpn-tunnel ARGS`, run from a directory that is not the file's (so
    /// relative paths must resolve against the file), with temporary XDG dirs.
    fn tunnel(&self, args: &[&str]) -> Command {
        let mut c = integration_tests::tunnel_command();
        c.args(args)
            .current_dir(self.xdg.path())
            .env("XDG_CONFIG_HOME", self.xdg.path().join("config"))
            .env("XDG_CACHE_HOME", self.xdg.path().join("cache"))
            .env("RUST_LOG", "info")
            .env_remove("ALPN_TUNNEL_UPGRADE");
        c
    }

    /// `alpn-tunnel up --config FILE NAMES...`, running.
    fn up(&self, file: &Path, names: &[&str]) -> Logged {
        let mut c = self.tunnel(&["up", "--config", file.to_str().unwrap()]);
        c.args(names);
        Logged::spawn(&mut c)
    }
}

fn forward(name: &str, server: &str, alpn: &str) -> String {
    format!(
        "[[forward]]\nname = \"{name}\"\nserver = \"{server}\"\nalpn = \"{alpn}\"\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// The address of the `n`th (from 1) `forward NAME: listening on ADDR` line.
fn listening(process: &Logged, name: &str, n: usize) -> SocketAddr {
    let needle = format!("forward {name}: listening on ");
    let started = Instant::now();
    loop {
        let log = process.log();
        if let Some(line) = log.lines().filter(|l| l.contains(&needle)).nth(n - 1) {
            let rest = &line[line.find(&needle).unwrap() + needle.len()..];
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no line {n} {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local connection to a forward.
fn open(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `what` and reads the echo.
fn round_trip(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).unwrap();
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("the echo of {:?}: {e}", String::from_utf8_lossy(what)));
    assert_eq!(back, what);
}

fn run(mut c: Command) -> (bool, String, String) {
    let out = c.stdin(Stdio::null()).output().expect("run alpn-tunnel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_starts_every_forward_and_each_carries_bytes() {
    let s = setup();
    let file = s.write(&format!(
        "{}{}{}",
        s.servers(),
        forward("web", "lb", "echo"),
        forward("db", "direct", "pg")
    ));
    let mut up = s.up(&file, &[]);
    for (name, alpn, server) in [("web", "echo", "lb"), ("db", "pg", "direct")] {
        let line = up.wait_for(&format!("forward {name}: listening on "));
        assert!(
            line.contains(&format!(" for {alpn} at "))
                && line.contains(&format!("(server {server})")),
            "{line}"
        );
        let mut c = open(listening(&up, name, 1));
        round_trip(&mut c, format!("hello {name}").as_bytes());
    }
    // `websocket` offers alpn-ping first, and the router takes it.
    let line = up.wait_for("via upgrade websocket-ping:");
    assert!(line.contains("bytes sent"), "{line}");
    up.signal("TERM");
    assert!(up.wait_exit(), "up exits cleanly on SIGTERM:\n{}", up.log());
}

#[test]
fn up_starts_only_the_forwards_named() {
    let s = setup();
    let file = s.write(&format!(
        "{}{}{}",
        s.servers(),
        forward("web", "lb", "echo"),
        forward("db", "direct", "pg")
    ));
    let mut up = s.up(&file, &["db"]);
    let mut c = open(listening(&up, "db", 1));
    round_trip(&mut c, b"only db");
    up.wait_for("up: 1 forward(s)");
    assert!(!up.log().contains("forward web:"), "{}", up.log());
    drop(c);
    up.signal("TERM");
    assert!(up.wait_exit());
}

/// The reload the issue describes: one forward kept, one removed, one changed
/// (another server), one added; then a bad file, which changes nothing.
#[test]
fn sighup_keeps_unchanged_forwards_and_their_connections() {
    let s = setup();
    let before = format!(
        "{}{}{}{}",
        s.servers(),
        forward("kept", "lb", "echo"),
        forward("gone", "direct", "pg"),
        forward("moved", "direct", "echo")
    );
    let file = s.write(&before);
    let mut up = s.up(&file, &[]);
    let (kept, gone, moved) = (
        listening(&up, "kept", 1),
        listening(&up, "gone", 1),
        listening(&up, "moved", 1),
    );
    let mut on_kept = open(kept);
    round_trip(&mut on_kept, b"kept before");
    let mut on_gone = open(gone);
    round_trip(&mut on_gone, b"gone before");
    let mut on_moved = open(moved);
    round_trip(&mut on_moved, b"moved before");

    let after = format!(
        "drain = \"30s\"\n{}{}{}{}",
        s.servers(),
        forward("kept", "lb", "echo"),
        forward("moved", "lb", "echo"),
        forward("added", "direct", "pg")
    );
    s.write(&after);
    up.signal("HUP");
    let line = up.wait_for("reloaded: ");
    assert!(
        line.contains("kept kept; restarted moved; stopped gone; started added; failed none"),
        "{line}"
    );
    // The kept forward's connection was never touched; it still carries bytes.
    round_trip(&mut on_kept, b"kept after the reload");
    // Removed and changed forwards stop listening but drain their connections.
    round_trip(&mut on_gone, b"gone, draining");
    round_trip(&mut on_moved, b"moved, draining");
    assert!(
        TcpStream::connect(gone).is_err(),
        "gone's listener is closed"
    );
    up.wait_for("forward gone: listener closed; 1 open connection(s) may go on for up to 30s");
    // The changed forward listens again (port 0: a new port), on its new server.
    let moved_again = listening(&up, "moved", 2);
    let line = up
        .log()
        .lines()
        .filter(|l| l.contains("forward moved: listening on"))
        .nth(1)
        .unwrap()
        .to_string();
    assert!(line.contains("(server lb)"), "{line}");
    round_trip(&mut open(moved_again), b"moved, restarted");
    round_trip(&mut open(listening(&up, "added", 1)), b"added");
    round_trip(&mut open(kept), b"kept, a new connection");

    // A bad file is refused with the key, and the running set stays.
    s.write(&format!("{after}colour = \"blue\"\n"));
    up.signal("HUP");
    let line = up.wait_for("reload refused");
    assert!(line.contains("key \"forward[2].colour\""), "{line}");
    round_trip(&mut on_kept, b"kept after the refused reload");
    round_trip(&mut open(kept), b"kept, another new connection");
    round_trip(&mut on_gone, b"gone, still draining");

    // SIGTERM stops everything: open connections are cut (reset).
    up.signal("TERM");
    assert!(up.wait_exit(), "{}", up.log());
    let mut rest = [0u8; 1];
    assert!(
        !matches!(on_kept.read(&mut rest), Ok(n) if n > 0),
        "no bytes after the stop"
    );
}

#[test]
fn a_removed_forward_is_cut_after_the_drain() {
    let s = setup();
    let file = s.write(&format!(
        "{}{}{}",
        s.servers(),
        forward("stays", "direct", "echo"),
        forward("goes", "lb", "echo")
    ));
    let mut up = s.up(&file, &[]);
    let mut on_goes = open(listening(&up, "goes", 1));
    round_trip(&mut on_goes, b"before");
    s.write(&format!(
        "drain = \"1s\"\n{}{}",
        s.servers(),
        forward("stays", "direct", "echo")
    ));
    up.signal("HUP");
    up.wait_for("forward goes: cutting 1 connection(s) still open after 1s");
    up.wait_for("forward goes: stopped");
    let mut rest = [0u8; 1];
    match on_goes.read(&mut rest) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a cut connection is reset, not {other:?}"),
    }
    round_trip(&mut open(listening(&up, "stays", 1)), b"stays");
}

#[test]
fn check_config_summarises_or_names_the_key() {
    let s = setup();
    // The shipped example is valid (given the files it names).
    let example = integration_tests::root().join("client/alpn-tunnel.example.toml");
    let copy = s.pki.path("example.toml");
    std::fs::copy(&example, &copy).unwrap();
    let (ok, out, err) = run(s.tunnel(&["check-config", "--config", copy.to_str().unwrap()]));
    assert!(ok, "{err}");
    assert!(
        out.contains("forward postgres: 127.0.0.1:5432 -> db (ALPN postgresql)")
            && out.contains("forward redis: 127.0.0.1:6379 -> cache (ALPN redis)"),
        "{out}"
    );

    // Without --config: $XDG_CONFIG_HOME/alpn-tunnel/config.toml.
    let (ok, _, err) = run(s.tunnel(&["check-config"]));
    assert!(!ok && err.contains("alpn-tunnel/config.toml"), "{err}");
    let dir = s.xdg.path().join("config/alpn-tunnel");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(&example).unwrap();
    let text = text.replace(
        "ca = \"router-ca.pem\"",
        &format!("ca = {:?}", s.pki.path("router-ca.pem")),
    );
    let text = text
        .replace(
            "cert = \"client.pem\"",
            &format!("cert = {:?}", s.pki.path("client.pem")),
        )
        .replace(
            "key = \"client.key\"",
            &format!("key = {:?}", s.pki.path("client.key")),
        );
    std::fs::write(dir.join("config.toml"), text).unwrap();
    let (ok, out, err) = run(s.tunnel(&["check-config"]));
    assert!(ok, "{err}");
    assert!(out.contains("2 server(s), 2 forward(s)"), "{out}");

    let servers = s.servers();
    let cases = [
        (
            servers.replace("ca = \"router-ca.pem\"\ncert", "ca = \"missing.pem\"\ncert"),
            "servers.direct.ca",
        ),
        (
            servers.replace("key = \"client.key\"", "key = \"server.key\""),
            "servers.direct.key",
        ),
        (
            servers.replace("upgrade = \"websocket\"", "upgrade = \"sometimes\""),
            "servers.lb.upgrade",
        ),
        (
            format!(
                "{servers}{}{}",
                forward("a", "lb", "echo"),
                forward("a", "lb", "pg")
            ),
            "forward[1].name",
        ),
        (
            format!("{servers}{}", forward("a", "nowhere", "echo")),
            "forward[0].server",
        ),
        (
            format!("{servers}proxy = \"socks5://proxy.test:1080\"\n"),
            "servers.lb.proxy",
        ),
    ];
    for (toml, key) in cases {
        let file = s.write(&toml);
        let (ok, _, err) = run(s.tunnel(&["check-config", "--config", file.to_str().unwrap()]));
        assert!(!ok, "{toml} passed");
        assert!(err.contains(&format!("key \"{key}\"")), "{key}: {err}");
        // up refuses it the same way, at start.
        let (ok, _, err) = run(s.tunnel(&["up", "--config", file.to_str().unwrap()]));
        assert!(
            !ok && err.contains(&format!("key \"{key}\"")),
            "{key}: {err}"
        );
    }

    // A name on the command line that the file does not have.
    let file = s.write(&format!("{servers}{}", forward("web", "lb", "echo")));
    let (ok, _, err) = run(s.tunnel(&["up", "--config", file.to_str().unwrap(), "wbe"]));
    assert!(
        !ok && err.contains("no forward named \"wbe\" (the file has: web)"),
        "{err}"
    );
}

/// The supervisor in-process (`alpn_tunnel::up::Forwards`): what a reload
/// keeps, restarts, stops and starts, and that a kept forward keeps its
/// listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_apply_changes_only_what_changed() {
    use alpn_tunnel::config_file::ConfigFile;
    use alpn_tunnel::up::{Changes, Forwards};
    let s = setup();
    let load = |toml: String| {
        let file = ConfigFile::load(&s.write(&toml)).unwrap();
        (file.forwards, file.drain)
    };
    let (first, drain) = load(format!(
        "{}{}{}",
        s.servers(),
        forward("a", "lb", "echo"),
        forward("b", "direct", "echo")
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut set = Forwards::start(&first, drain, shutdown.clone())
        .await
        .unwrap();
    let before = set.addresses();
    let same = set.apply(&first, drain).await;
    assert_eq!(same.kept, ["a", "b"]);
    assert_eq!(set.addresses(), before, "nothing rebinds");
    let (second, drain) = load(format!(
        "{}{}{}",
        s.servers().replace(
            "timeout = \"5s\"\n\n[servers.lb]",
            "timeout = \"6s\"\n\n[servers.lb]"
        ),
        forward("a", "lb", "echo"),
        forward("c", "lb", "pg")
    ));
    let changes = set.apply(&second, drain).await;
    assert_eq!(
        changes,
        Changes {
            kept: vec!["a".into()],
            stopped: vec!["b".into()],
            started: vec!["c".into()],
            ..Changes::default()
        }
    );
    let (third, drain) = load(format!(
        "{}{}{}",
        s.servers()
            .replace("upgrade = \"websocket\"", "upgrade = \"alpn-ping\""),
        forward("a", "lb", "echo"),
        forward("c", "lb", "pg")
    ));
    let changes = set.apply(&third, drain).await;
    assert_eq!(
        changes.restarted,
        ["a", "c"],
        "a changed server changes its forwards"
    );
    let a = set.addresses()[0].1;
    let mut local = tokio::net::TcpStream::connect(a).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        local.write_all(b"restarted").await.unwrap();
        let mut back = [0u8; 9];
        tokio::time::timeout(DEADLINE, local.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"restarted");
    }
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, set.wait()).await.unwrap();
}
