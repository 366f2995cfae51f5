//! The harness's own promises that the other tests rely on.

use std::fs;
use std::time::Duration;

use integration_tests::load_balancer::{Kind, LoadBalancer};

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    == Some(pid.to_string().as_str())
            })
        })
        .collect()
}

#[test]
fn a_stopped_load_balancer_leaves_no_process_behind() {
    // nginx's workers outlive a SIGKILLed master: every test and benchmark run
    // would leave two behind, some of them spinning.
    for kind in [Kind::Nginx, Kind::Haproxy] {
        let lb = LoadBalancer::start(kind, "127.0.0.1:9".parse().unwrap(), Duration::from_secs(5));
        let master = lb.pid().expect("nginx and HAProxy are child processes");
        let mut all = children(master);
        if kind == Kind::Nginx {
            assert!(!all.is_empty(), "nginx runs workers");
        }
        all.push(master);
        drop(lb);
        let left: Vec<u32> = all
            .into_iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        assert!(left.is_empty(), "{}: still running: {left:?}", kind.name());
    }
}
