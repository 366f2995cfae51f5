//! The proxy-wasm glue: the root context that owns the configuration and the
//! metrics, and the HTTP context that gathers a request's facts, asks
//! [`decide`](crate::decision::decide) and carries out the verdict. Only built
//! for `wasm32-wasip1`, where Envoy provides the host calls.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::Config;
use crate::decision::{decide, RefusalKind, Verdict};
use crate::rate_limit::{Bucket, BucketStore};
use alpn_protocol::client_addr;
use alpn_protocol::names::UpgradeType;
use alpn_protocol::request::Request;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(UpgradeRoot { state: None }) });
}}

/// Prefix of every metric; Envoy shows them as `wasmcustom.alpn_upgrade.*`.
const METRIC_PREFIX: &str = "alpn_upgrade";

/// What every HTTP context shares: the configuration and the metric ids.
struct State {
    config: Config,
    /// Streams Envoy created a context in the VM for: shows which requests cost
    /// the filter anything at all (the shipped matcher keeps ordinary ones out).
    streams: Option<u32>,
    /// One counter per allowed type, in `config.names.allowed_types` order,
    /// named by PROTOCOL.md's token whatever the type is renamed to.
    approved: Vec<Option<u32>>,
    /// One counter per refusal kind, in `RefusalKind::ALL` order.
    refused: Vec<Option<u32>>,
}

impl State {
    fn new(config: Config) -> State {
        let counter = |name: String| match hostcalls::define_metric(MetricType::Counter, &name) {
            Ok(id) => Some(id),
            Err(status) => {
                warn!("cannot define metric {name}: {status:?}; it will not be counted");
                None
            }
        };
        let approved = config
            .names
            .allowed_types
            .iter()
            .map(|t| counter(format!("{METRIC_PREFIX}.approved.{}", t.default_token())))
            .collect();
        let refused = RefusalKind::ALL
            .iter()
            .map(|k| counter(format!("{METRIC_PREFIX}.refused.{}", k.name())))
            .collect();
        State {
            streams: counter(format!("{METRIC_PREFIX}.streams")),
            config,
            approved,
            refused,
        }
    }

    fn count_approved(&self, upgrade_type: UpgradeType) {
        let index = self
            .config
            .names
            .allowed_types
            .iter()
            .position(|t| *t == upgrade_type);
        increment(index.and_then(|i| self.approved[i]));
    }

    fn count_refused(&self, kind: RefusalKind) {
        let index = RefusalKind::ALL.iter().position(|k| *k == kind);
        increment(index.and_then(|i| self.refused[i]));
    }
}

fn increment(id: Option<u32>) {
    if let Some(id) = id {
        if let Err(status) = hostcalls::increment_metric(id, 1) {
            warn!("cannot increment metric {id}: {status:?}");
        }
    }
}

/// The root context: parses the configuration once per VM.
struct UpgradeRoot {
    state: Option<Rc<State>>,
}

impl Context for UpgradeRoot {}

impl RootContext for UpgradeRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                info!(
                    "configured: upgrade paths {:?}, types {}, trusted hops {} through proxies {:?}, source allow-list {}, rate limit {}",
                    config.names.upgrade_paths,
                    config.names.allowed_list(),
                    config.trusted_hops,
                    config.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    if config.allowed_sources.is_some() { "on" } else { "off" },
                    match &config.rate_limit {
                        Some(r) => format!("{} per {} s", r.upgrades, r.per_seconds),
                        None => "off".into(),
                    }
                );
                self.state = Some(Rc::new(State::new(config)));
                true
            }
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configuration Envoy does not create streams for this plugin;
        // should it anyway, the stream passes untouched rather than failing.
        if let Some(state) = &self.state {
            increment(state.streams);
        }
        Some(Box::new(UpgradeHttp {
            state: self.state.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream.
struct UpgradeHttp {
    state: Option<Rc<State>>,
}

impl Context for UpgradeHttp {}

impl HttpContext for UpgradeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            error!("no configuration: passing the request untouched");
            return Action::Continue;
        };
        let config = &state.config;
        if is_ordinary(config) {
            return Action::Continue;
        }
        let headers: Vec<(String, String)> =
            match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
                Ok(headers) => headers,
                Err(status) => {
                    error!(
                    "cannot read the request headers ({status:?}): passing the request untouched"
                );
                    return Action::Continue;
                }
            }
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let req = Request {
            method: header(":method"),
            path: header(":path"),
            headers: &headers,
        };

        let peer = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .and_then(|b| client_addr::parse_addr(&String::from_utf8_lossy(&b)));
        let client = client_addr::derive(
            req.values("x-forwarded-for"),
            peer,
            config.trusted_hops,
            &config.trusted_proxies,
        );
        let now_ms = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);

        match decide(&req, config, client, &mut SharedDataStore, now_ms) {
            Verdict::Pass => Action::Continue,
            Verdict::Approve(approval) => {
                state.count_approved(approval.upgrade_type);
                let client_text = client.map(|c| c.to_string());
                if let Err(status) = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    &config.names.client_addr_header,
                    client_text.as_deref(),
                ) {
                    // Forwarding a client-supplied address would be worse than refusing.
                    error!(
                        "cannot set {} ({status:?}): refusing the upgrade",
                        config.names.client_addr_header
                    );
                    return self.answer(
                        500,
                        vec![],
                        "the filter could not record the client address\n",
                    );
                }
                debug!(
                    "approved {} upgrade{} on {} from client {} (peer {})",
                    config.names.type_token(approval.upgrade_type),
                    approval
                        .subprotocol
                        .map(|s| format!(" (subprotocol {})", config.names.subprotocol_token(s)))
                        .unwrap_or_default(),
                    req.path_only(),
                    show(client),
                    show(peer),
                );
                if approval.from_duplicate_header {
                    info!(
                        "upgrade type taken from {} because Upgrade was removed on the way",
                        config.names.duplicate_upgrade_header
                    );
                }
                Action::Continue
            }
            Verdict::Refuse(refusal) => {
                state.count_refused(refusal.kind);
                info!(
                    "refused {} {} with {} {} ({}; client {}, peer {})",
                    req.method,
                    req.path,
                    refusal.kind.status(),
                    refusal.kind.name(),
                    refusal.reason,
                    show(client),
                    show(peer),
                );
                let mut response: Vec<(&str, &str)> =
                    vec![("content-type", "text/plain; charset=utf-8")];
                response.extend(refusal.headers.iter().map(|(n, v)| (*n, v.as_str())));
                self.answer(refusal.kind.status(), response, &refusal.body())
            }
        }
    }
}

impl UpgradeHttp {
    /// Sends a local reply and stops the request here.
    fn answer(&self, status: u32, mut headers: Vec<(&str, &str)>, body: &str) -> Action {
        if !headers.iter().any(|(n, _)| *n == "content-type") {
            headers.push(("content-type", "text/plain; charset=utf-8"));
        }
        if let Err(status_err) =
            hostcalls::send_http_response(status, headers, Some(body.as_bytes()))
        {
            error!("cannot send the {status} answer: {status_err:?}");
        }
        Action::Pause
    }
}

/// Whether a request is certainly neither on an upgrade path nor an upgrade:
/// three header look-ups instead of copying the whole map out of Envoy. Such a
/// request would get `Verdict::Pass` from the decision anyway. The shipped Envoy
/// configuration keeps these requests out of the VM altogether; this is for
/// one that does not.
fn is_ordinary(config: &Config) -> bool {
    let header = |name: &str| {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    };
    let Some(path) = header(":path") else {
        return false;
    };
    let path = String::from_utf8_lossy(&path);
    let path_only = path.split(['?', '#']).next().unwrap_or("");
    !config.names.is_upgrade_path(path_only)
        && header("upgrade").is_none()
        && header(&config.names.duplicate_upgrade_header).is_none()
}

fn show(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".into(), |a| a.to_string())
}

/// The rate-limit buckets in proxy-wasm shared data, shared by every worker's VM.
struct SharedDataStore;

impl SharedDataStore {
    fn key(slot: u32) -> String {
        format!("{METRIC_PREFIX}.rate.{slot}")
    }
}

impl BucketStore for SharedDataStore {
    fn load(&mut self, slot: u32) -> (Option<Bucket>, Option<u32>) {
        match hostcalls::get_shared_data(&Self::key(slot)) {
            Ok((bytes, cas)) => (bytes.as_deref().and_then(Bucket::decode), cas),
            Err(status) => {
                warn!("rate limit: cannot read shared data: {status:?}");
                (None, None)
            }
        }
    }

    fn store(&mut self, slot: u32, bucket: &Bucket, cas: Option<u32>) -> bool {
        match hostcalls::set_shared_data(&Self::key(slot), Some(&bucket.encode()), cas) {
            Ok(()) => true,
            Err(Status::CasMismatch) => false,
            Err(status) => {
                warn!("rate limit: cannot write shared data: {status:?}");
                true
            }
        }
    }
}
