//! The filter as an OCI image (`deploy/k8s/image/build.py`), as Istio gets it:
//! built twice to the same digest, which is the one committed and in the
//! WasmPlugin; pushed with skopeo to a real registry (Debian's
//! docker-registry) and fetched back over the registry API, then checked the way
//! Istio's fetcher checks it (`pkg/wasm/imagefetcher.go`, `cache.go`): the
//! manifest's digest against the WasmPlugin's sha256, the compat variant's
//! single gzipped tar layer, `plugin.wasm` in it equal to the built module.
//! And the module imports nothing a proxy may lack.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::http::{self, Response};
use integration_tests::istio;
use integration_tests::registry::Registry;
use ring::digest::{digest, SHA256};
use serde_json::Value;

const TAG: &str = "0.1.0";
const REPOSITORY: &str = "alpn-upgrade-filter";
/// The WASI calls the filter may import (the Rust standard library's); every
/// other import must be a proxy-wasm host call, `env.proxy_*`.
const WASI_ALLOWED: [&str; 4] = ["environ_get", "environ_sizes_get", "fd_write", "proc_exit"];

fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `deploy/k8s/image/build.py` into `out`; returns the digest it printed.
fn build_image(out: &Path) -> String {
    let python = integration_tests::built(".venv/bin/python", "make k8s-istio-tools");
    let o = Command::new(python)
        .arg(integration_tests::root().join("deploy/k8s/image/build.py"))
        .arg(integration_tests::filter_wasm())
        .arg(out)
        .args(["--tag", TAG])
        .output()
        .expect("run build.py");
    assert!(
        o.status.success(),
        "build.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Every file of a directory tree, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// The WasmPlugin's sha256.
fn plugin_sha256() -> String {
    istio::manifest("wasmplugin.yaml", "WasmPlugin")["spec"]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_image_builds_twice_to_the_committed_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let first = build_image(&a);
    let second = build_image(&b);
    assert_eq!(first, second, "two builds, two digests");
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(
        ta.len(),
        5,
        "oci-layout, index.json, three blobs: {:?}",
        ta.keys()
    );
    assert!(ta == tb, "the two layouts differ");

    let committed =
        fs::read_to_string(integration_tests::root().join("deploy/k8s/image/digest.txt")).unwrap();
    assert!(
        committed.lines().any(|l| l == format!("manifest {first}")),
        "deploy/k8s/image/digest.txt does not name {first} (run make k8s-istio-refresh):\n{committed}"
    );
    assert_eq!(
        format!("sha256:{}", plugin_sha256()),
        first,
        "wasmplugin.yaml's sha256"
    );
}

fn get(registry: &Registry, path: &str, accept: &str) -> Response {
    http::exchange(
        registry.addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n",
            registry.addr
        )
        .as_bytes(),
    )
}

#[test]
fn the_image_pushed_to_a_registry_comes_back_as_istio_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let digest_built = build_image(&layout);
    let registry = Registry::start();

    // skopeo as an operator would push it; --preserve-digests: fail rather
    // than rewrite the manifest (which would change the digest).
    let reference = format!("{}/{REPOSITORY}:{TAG}", registry.addr);
    let o = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{TAG}", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo (make k8s-istio-tools installs it)");
    assert!(
        o.status.success(),
        "skopeo copy: {}\n{}\nregistry:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        registry.log()
    );

    // The manifest, as go-containerregistry asks for it.
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let r = get(
        &registry,
        &format!("/v2/{REPOSITORY}/manifests/{TAG}"),
        accept,
    );
    assert_eq!(r.status, 200, "{r:?}");
    // cache.go: the manifest's digest must equal the WasmPlugin's sha256.
    let digest = sha256_hex(&r.body);
    assert_eq!(
        digest,
        plugin_sha256(),
        "the registry's manifest is not the WasmPlugin's sha256"
    );
    assert_eq!(format!("sha256:{digest}"), digest_built);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest_built.as_str())
    );

    // imagefetcher.go: not a Docker schema 2 manifest, so the compat variant:
    // the last layer is application/vnd.oci.image.layer.v1.tar+gzip.
    let manifest: Value = serde_json::from_slice(&r.body).unwrap();
    assert_ne!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    let layers = manifest["layers"].as_array().unwrap();
    let layer = layers.last().expect("at least one layer");
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer_digest = layer["digest"].as_str().unwrap();
    let blob = get(
        &registry,
        &format!("/v2/{REPOSITORY}/blobs/{layer_digest}"),
        "*/*",
    );
    assert_eq!(blob.status, 200, "{blob:?}");
    assert_eq!(format!("sha256:{}", sha256_hex(&blob.body)), layer_digest);
    assert_eq!(blob.body.len() as u64, layer["size"].as_u64().unwrap());

    // extractWasmPluginBinary: gunzip, untar, the entry named plugin.wasm.
    let blob_file = dir.path().join("layer.tar.gz");
    fs::write(&blob_file, &blob.body).unwrap();
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(&blob_file)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert_eq!(listing.lines().count(), 1, "one entry: {listing}");
    assert!(
        listing.starts_with("-r--r--r-- 0/0"),
        "fixed mode and owner: {listing}"
    );
    assert!(
        listing.contains(" 1970-01-01 00:00 plugin.wasm"),
        "fixed mtime: {listing}"
    );
    let extracted = Command::new("tar")
        .arg("-xzOf")
        .arg(&blob_file)
        .arg("plugin.wasm")
        .output()
        .unwrap();
    assert!(extracted.status.success());
    let module = fs::read(integration_tests::filter_wasm()).unwrap();
    assert!(
        extracted.stdout == module,
        "plugin.wasm is not the built module"
    );
    // isValidWasmBinary: the Wasm magic number and version 1.
    assert_eq!(&extracted.stdout[..8], b"\0asm\x01\0\0\0");
}

/// The imports of a module, as `wasm-objdump -x -j Import` lists them.
fn imports(wasm: &Path) -> Vec<(String, String)> {
    let o = Command::new("wasm-objdump")
        .args(["-x", "-j", "Import"])
        .arg(wasm)
        .output()
        .expect("run wasm-objdump (make k8s-istio-tools installs wabt)");
    assert!(
        o.status.success(),
        "wasm-objdump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // " - func[3] sig=9 <env.proxy_set_property> <- env.proxy_set_property"
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.rsplit_once(" <- "))
        .map(|(_, name)| {
            let (module, field) = name.split_once('.').expect("module.field");
            (module.to_string(), field.to_string())
        })
        .collect()
}

/// The imports outside the allow-list.
fn not_allowed(imports: &[(String, String)]) -> Vec<String> {
    imports
        .iter()
        .filter(|(m, f)| {
            !(m == "env" && f.starts_with("proxy_")
                || m == "wasi_snapshot_preview1" && WASI_ALLOWED.contains(&f.as_str()))
        })
        .map(|(m, f)| format!("{m}.{f}"))
        .collect()
}

#[test]
fn the_module_imports_only_proxy_wasm_calls_and_four_wasi_calls() {
    let found = imports(&integration_tests::filter_wasm());
    assert!(
        found.iter().any(|(m, f)| m == "env" && f == "proxy_log"),
        "no proxy_log import: is this the filter? {found:?}"
    );
    assert!(
        found.iter().any(|(m, _)| m == "wasi_snapshot_preview1"),
        "{found:?}"
    );
    assert_eq!(not_allowed(&found), Vec::<String>::new());

    // The same check refuses a module that imports more (WASI fd_read).
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("more.wat");
    fs::write(
        &wat,
        r#"(module
             (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .unwrap();
    let wasm = dir.path().join("more.wasm");
    let o = Command::new("wat2wasm")
        .arg(&wat)
        .arg("-o")
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "wat2wasm: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        not_allowed(&imports(&wasm)),
        vec!["wasi_snapshot_preview1.fd_read"]
    );
}
