//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF
//! Distribution registry) with its own configuration and storage in a temporary
//! directory, on loopback port 0; the port it bound is read back from its log.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;

use crate::http;
use crate::process::Logged;

/// A running registry; killed when dropped.
pub struct Registry {
    /// Where it serves the registry API (plain HTTP).
    pub addr: SocketAddr,
    process: Logged,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts `docker-registry` (installed by `make k8s-istio-tools`) and waits
    /// until `/v2/` answers.
    pub fn start() -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run `make k8s-istio-tools` first (make test does)"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).unwrap();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log: {{level: info}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}}}\n\
                 http: {{addr: \"127.0.0.1:0\"}}\n",
                storage.display()
            ),
        )
        .unwrap();
        let mut process = Logged::spawn(Command::new(bin).arg("serve").arg(&config));
        // msg="listening on 127.0.0.1:PORT" go.version=...
        let line = process.wait_for("msg=\"listening on ");
        let addr: SocketAddr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let r = http::get(addr, "/v2/");
        assert_eq!(
            r.status,
            200,
            "the registry's /v2/: {r:?}\n{}",
            process.log()
        );
        Registry {
            addr,
            process,
            _dir: dir,
        }
    }

    /// Everything the registry logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
