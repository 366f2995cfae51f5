//! The shipped Envoy files: the bootstraps agree with the fragment, and every
//! one passes `envoy --mode validate` (which also loads the filter and runs its
//! `on_configure`). A broken file is shown to fail, so the check can fail.

use std::fs;
use std::process::Command;

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::tls::ServerCert;

const BOOTSTRAPS: [&str; 3] = ["behind-l7.yaml", "behind-l7-tls.yaml", "direct.yaml"];

/// A bootstrap with the certificate paths pointing at a fresh rcgen certificate.
fn with_test_certificate(name: &str, dir: &std::path::Path) -> Bootstrap {
    let b = Bootstrap::shipped(name);
    if b.text().contains("/etc/envoy/tls/server.pem") {
        b.certificate(&ServerCert::generate(dir))
    } else {
        b
    }
}

#[test]
fn the_bootstraps_are_rendered_from_the_fragment() {
    let out = Command::new("python3")
        .arg(integration_tests::root().join("envoy/render.py"))
        .arg("--check")
        .output()
        .expect("run python3 envoy/render.py --check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = fs::read_dir(integration_tests::root().join("envoy"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "fragment.yaml")
        .collect();
    for name in &listed {
        assert!(
            BOOTSTRAPS.contains(&name.as_str()),
            "{name} is not validated by this test"
        );
    }
}

#[test]
fn every_shipped_bootstrap_passes_envoy_validate() {
    for name in BOOTSTRAPS {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = with_test_certificate(name, dir.path());
        let (status, log) = Envoy::run_to_exit(&bootstrap, &["--mode", "validate"]);
        assert!(status.success(), "{name} fails validation:\n{log}");
        assert!(
            log.contains("configured: upgrade paths"),
            "{name}: the filter's on_configure did not run:\n{log}"
        );
    }
}

#[test]
fn validation_fails_on_a_broken_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let broken = with_test_certificate("behind-l7.yaml", dir.path())
        .replace("route: {cluster: web}", "route: {cluster: no_such_cluster}");
    let (status, log) = Envoy::run_to_exit(&broken, &["--mode", "validate"]);
    assert!(
        !status.success(),
        "a route to a missing cluster was accepted"
    );
    assert!(log.contains("no_such_cluster"), "{log}");
}
