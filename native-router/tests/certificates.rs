//! A private key that does not belong to its certificate is refused wherever a
//! pair is named (the default certificate, per-SNI certificates, TLS from
//! Envoy), at `check`, at start and at reload, with an error naming the key and
//! both files: a rotation typo must never become an outage.

mod support;

use std::process::{Command, Stdio};

use alpn_router::{Config, ConfigError};
use support::{backend, config, echo, router_command, tunnel, Pki, RouterProcess, DEADLINE};

/// The configuration with the default certificate's key swapped for the
/// client certificate's (another key pair).
fn mismatched(routes: &str) -> String {
    config(routes).replace("key = \"server.key\"", "key = \"client.key\"")
}

/// A route whose backend is never dialled by these tests.
const ROUTE: &str = "[[route]]\nalpn = \"redis\"\nbackend = \"127.0.0.1:6379\"\n";

fn assert_names_key_and_files(shown: &str, key: &str) {
    for part in [key, "client.key", "server.pem", "is not the private key of"] {
        assert!(shown.contains(part), "{part:?} missing from: {shown}");
    }
}

#[test]
fn every_pair_is_checked_when_loading() {
    let pki = Pki::new();
    let cases = [
        ("tls.key", mismatched(ROUTE)),
        (
            "tls.sni[0].key",
            config(ROUTE).replace(
                "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n",
                "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nsni = [{ name = \"db.router.test\", cert = \"server.pem\", key = \"client.key\" }]\n",
            ),
        ),
        (
            "upgrade.tls.key",
            config(ROUTE).replace(
                "ping_interval = \"30s\"\n",
                "ping_interval = \"30s\"\ntls = { cert = \"server.pem\", key = \"client.key\" }\n",
            ),
        ),
    ];
    for (key, toml) in cases {
        let file = pki.path("router.toml");
        std::fs::write(&file, &toml).unwrap();
        let err = Config::load(&file).unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
            "{key}: {shown}"
        );
        assert_names_key_and_files(&shown, key);
    }
}

#[test]
fn check_and_start_refuse_a_key_of_another_certificate() {
    let pki = Pki::new();
    let file = pki.path("router.toml");
    std::fs::write(&file, mismatched(ROUTE)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alpn-router"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check said ok:\n{stderr}");
    assert_names_key_and_files(&stderr, "tls.key");

    // Serving it must fail at once rather than fail every handshake.
    let mut serve = router_command(None)
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = serve.kill();
            panic!("the router started serving a certificate with the wrong key");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert_names_key_and_files(&stderr, "tls.key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_key_of_another_certificate_and_keeps_serving() {
    let pki = Pki::new();
    let echo_backend = backend(echo);
    let routes = format!(
        "[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n",
        echo_backend.addr
    );
    let mut router = RouterProcess::start(pki.dir.path(), &config(&routes));
    router.rewrite(&mismatched(&routes));
    router.signal("HUP");
    let line = router.wait_for("reload refused");
    assert_names_key_and_files(&line, "tls.key");
    let (_, alpn) = tunnel(&pki, router.direct, None, &["redis"], None)
        .await
        .expect("the old certificate and key still serve");
    assert_eq!(alpn.as_deref(), Some("redis"));
}

/// A file that cannot be read: the reason once, after the file's name (it was
/// printed twice: in the message and again as the error's source).
#[test]
fn check_says_once_why_a_file_cannot_be_read() {
    let pki = Pki::new();
    let absent = pki.path("absent.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_alpn-router"))
        .args(["check", "--config"])
        .arg(&absent)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check said ok:\n{stderr}");
    let reason = "No such file or directory";
    assert!(
        stderr.contains(&format!("cannot read {}: {reason}", absent.display())),
        "{stderr}"
    );
    assert_eq!(stderr.matches(reason).count(), 1, "{stderr}");
}
