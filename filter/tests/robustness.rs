//! The filter never panics at request time: the decision over many generated
//! requests made of hostile pieces (odd methods, paths, header names in any
//! case, empty and repeated values, non-ASCII, huge lists), under every kind of
//! configuration. Each verdict must also be one of the documented answers.

use alpn_protocol::client_addr;
use alpn_protocol::request::Request;
use alpn_upgrade_filter::config::Config;
use alpn_upgrade_filter::decision::{decide, Verdict};
use alpn_upgrade_filter::rate_limit::MemoryStore;
use wasm_bindgen_test::wasm_bindgen_test;

const METHODS: &[&str] = &["GET", "POST", "get", "", "CONNECT", "G\u{e9}T"];
const PATHS: &[&str] = &[
    "/connectionupgrade",
    "/connectionupgrade?",
    "/",
    "",
    "?",
    "/connectionupgrade#x",
    "/x/../connectionupgrade",
];
const NAMES: &[&str] = &[
    "upgrade",
    "UPGRADE",
    "connection",
    "x-alpn-upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    ":authority",
];
const VALUES: &[&str] = &[
    "",
    ",",
    " , ,",
    "alpn",
    "ALPN",
    "websocket",
    "alpn-ping",
    "upgrade",
    "keep-alive, upgrade",
    "13",
    "0",
    "-1",
    "99999999999999999999",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "====",
    "\u{fffd}\u{fffd}",
    "1.2.3.4, ::1, [::1]:80, x",
    "alpn,alpn,alpn,alpn,alpn,alpn,alpn,alpn",
    "\t",
    "a\u{0}b",
];
const CONFIGS: &[&str] = &[
    "",
    r#"{"trusted_hops": 3, "trusted_proxies": ["10.0.0.0/8", "::1"], "allowed_sources": ["0.0.0.0/0", "::/0"]}"#,
    r#"{"allowed_sources": ["10.0.0.0/8"], "rate_limit": {"upgrades": 1, "per_seconds": 1, "slots": 1}}"#,
    r#"{"upgrade_paths": ["/", "/connectionupgrade"], "allowed_types": ["websocket"], "subprotocol_tokens": {"alpn": "x"}, "websocket_subprotocols": ["x"]}"#,
];

struct Rng(u64);

impl Rng {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        from[(self.0 % from.len() as u64) as usize]
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn generated_requests_never_panic_and_get_a_documented_answer() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for config in CONFIGS {
        let config = Config::parse(config.as_bytes()).unwrap();
        let mut store = MemoryStore::default();
        for i in 0..3_000u64 {
            let count = (i % 9) as usize;
            let headers: Vec<(String, String)> = (0..count)
                .map(|_| (rng.pick(NAMES).to_string(), rng.pick(VALUES).to_string()))
                .collect();
            let req = Request {
                method: rng.pick(METHODS),
                path: rng.pick(PATHS),
                headers: &headers,
            };
            let peer = client_addr::parse_addr(rng.pick(&[
                "10.0.0.1",
                "::1",
                "bogus",
                "[::ffff:1.2.3.4]:9",
            ]));
            let client = client_addr::derive(
                req.values("x-forwarded-for"),
                peer,
                config.trusted_hops,
                &config.trusted_proxies,
            );
            match decide(&req, &config, client, &mut store, i * 10) {
                Verdict::Pass | Verdict::Approve(_) => {}
                Verdict::Refuse(r) => {
                    assert!([400, 403, 404, 405, 426, 429].contains(&r.kind.status()));
                    assert!(
                        !r.reason.is_empty() && !r.reason.contains('\n'),
                        "{:?}",
                        r.reason
                    );
                }
            }
        }
    }
}
