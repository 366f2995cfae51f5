//! Replays every file of `corpus/<target>/` (the seeds and every crash found,
//! kept as regression inputs) through its target on stable, without libFuzzer.

use std::fs;
use std::path::Path;

/// A target's body.
type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
const TARGETS: &[(&str, Target)] = &[
    ("router_request", alpn_fuzz::router_request),
    ("filter_request", alpn_fuzz::filter_request),
    ("client_answer", alpn_fuzz::client_answer),
    ("alpn_ping_read", alpn_fuzz::alpn_ping_read),
    ("websocket_read", alpn_fuzz::websocket_read),
    ("websocket_differential", alpn_fuzz::websocket_differential),
    ("proxy_v2", alpn_fuzz::proxy_v2),
    ("filter_config", alpn_fuzz::filter_config),
    ("router_config", alpn_fuzz::router_config),
    ("client_config", alpn_fuzz::client_config),
    ("server_url", alpn_fuzz::server_url),
    ("client_addr", alpn_fuzz::client_addr),
];

#[test]
fn corpora_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut dirs: Vec<String> = fs::read_dir(&root)
        .expect("fuzz/corpus")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(dirs, names, "one corpus directory per target, and no other");
    for (name, target) in TARGETS {
        let mut files: Vec<_> = fs::read_dir(root.join(name))
            .expect("a corpus directory")
            .map(|e| e.expect("an entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: no seeds");
        for file in files {
            let data = fs::read(&file).expect("a corpus file");
            eprintln!("{name}: {}", file.display());
            target(&data);
        }
    }
}
