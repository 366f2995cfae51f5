//! Envoy in the shape Istio gives an ingress gateway, built from the manifests
//! in `deploy/k8s/istio/` as Istio 1.30 would: the connection manager as
//! `pilot/pkg/networking/core` builds it for a gateway (`gateway.go`
//! `buildGatewayConnectionManager`, `listener_builder.go`
//! `buildHTTPConnectionManager`), the routes of the VirtualService, the
//! project's EnvoyFilter applied with MERGE semantics ([`merge`]: protobuf
//! merge, so lists are appended), and the WasmPlugin delivered through ECDS
//! (`pilot/pkg/model/extensions.go` `buildWasmConfig`, with the module as the
//! local file Istio's agent would have fetched) from a file on a watched
//! directory, which a test can replace to push a new configuration.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::envoy::Bootstrap;

/// The Istio release whose behaviour this module reproduces (and whose CRDs
/// `deploy/k8s/schemas/` holds).
pub const ISTIO_VERSION: &str = "1.30.3";

/// The gateway listener's port as Istio names it (the Service's targetPort):
/// the EnvoyFilter's `portNumber` and the WasmPlugin's match port. The test
/// listener itself binds port 0.
pub const GATEWAY_PORT: u64 = 8080;

/// The manifests' directory.
pub fn manifests() -> PathBuf {
    crate::root().join("deploy/k8s/istio")
}

/// The YAML documents of `path`, as JSON values (read with the project venv's
/// PyYAML, which `make k8s-istio-tools` installs).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = crate::built(".venv/bin/python", "make k8s-istio-tools");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// The one object of `kind` in `deploy/k8s/istio/<file>`.
pub fn manifest(file: &str, kind: &str) -> Value {
    let docs = yaml_documents(&manifests().join(file));
    let mut found: Vec<Value> = docs.into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{file}: expected one {kind}");
    found.remove(0)
}

/// Protobuf merge in JSON form, as Istio's EnvoyFilter MERGE applies a patch
/// (`proto.Merge`): fields of messages merge recursively, repeated fields are
/// appended, scalars are replaced. An `Any` (`@type`) merges with one of the
/// same type only.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            if let (Some(bt), Some(pt)) = (b.get("@type"), p.get("@type")) {
                assert_eq!(bt, pt, "MERGE of an Any with another type");
            }
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) => b.extend(p.iter().cloned()),
        (b, p) => *b = p.clone(),
    }
}

/// Applies an EnvoyFilter's NETWORK_FILTER MERGE patches to `listener`, which
/// stands for the gateway listener on `port`: each patch whose match names
/// that port (or none) and the filter's name is merged into that filter.
/// Returns how many filters were patched.
pub fn apply_envoy_filter(listener: &mut Value, envoy_filter: &Value, port: u64) -> usize {
    let mut patched = 0;
    for p in envoy_filter["spec"]["configPatches"]
        .as_array()
        .expect("configPatches")
    {
        assert_eq!(
            p["applyTo"], "NETWORK_FILTER",
            "only NETWORK_FILTER patches are supported here"
        );
        assert_eq!(
            p["patch"]["operation"], "MERGE",
            "only MERGE is supported here"
        );
        assert_eq!(p["match"]["context"], "GATEWAY");
        let m = &p["match"]["listener"];
        if m["portNumber"].as_u64().is_some_and(|n| n != port) {
            continue;
        }
        let name = &m["filterChain"]["filter"]["name"];
        for chain in listener["filter_chains"]
            .as_array_mut()
            .expect("filter_chains")
        {
            for filter in chain["filters"].as_array_mut().expect("filters") {
                if &filter["name"] == name {
                    merge(filter, &p["patch"]["value"]);
                    patched += 1;
                }
            }
        }
    }
    patched
}

/// The ECDS resource name Istio gives a WasmPlugin (1.30 translates it into a
/// TrafficExtension: `pilot/pkg/config/kube/extensions/translate.go`).
pub fn extension_name(plugin: &Value) -> String {
    format!(
        "extensions.istio.io/trafficextension/{}.{}~istio-translated-wasmplugin",
        plugin["metadata"]["namespace"].as_str().unwrap(),
        plugin["metadata"]["name"].as_str().unwrap()
    )
}

/// The ECDS resource (a `TypedExtensionConfig` holding the Wasm filter) that
/// Istio builds from a WasmPlugin with `plugin_config` as its pluginConfig, the
/// module converted to a local file as Istio's agent does.
pub fn wasm_extension_config(plugin: &Value, plugin_config: &Value, wasm: &Path) -> Value {
    let spec = &plugin["spec"];
    let failure_policy = match spec["failStrategy"].as_str() {
        Some("FAIL_CLOSE") => "FAIL_CLOSED",
        Some("FAIL_OPEN") | None => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        Some(other) => panic!("unknown failStrategy {other}"),
    };
    let name = extension_name(plugin);
    json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name.trim_start_matches("extensions.istio.io/trafficextension/"),
                "root_id": spec["pluginName"],
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config.to_string(),
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}},
                    "environment_variables": {
                        "key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}
                    },
                },
                "failure_policy": failure_policy,
            }
        }
    })
}

/// The directory Envoy watches for the ECDS file; [`Ecds::push`] replaces the
/// file by a rename into it, as Envoy's `watched_directory` wants.
pub struct Ecds {
    dir: tempfile::TempDir,
    version: u32,
}

impl Ecds {
    /// A new directory holding `resource` as version 1.
    pub fn new(resource: &Value) -> Ecds {
        let mut ecds = Ecds {
            dir: tempfile::tempdir().expect("temporary directory"),
            version: 0,
        };
        fs::create_dir(ecds.dir.path().join("watched")).unwrap();
        ecds.push(resource);
        ecds
    }

    /// The file Envoy reads.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("watched/wasm-plugin.json")
    }

    /// The watched directory.
    pub fn watched(&self) -> PathBuf {
        self.dir.path().join("watched")
    }

    /// Writes `resource` as the next version and moves it into place.
    pub fn push(&mut self, resource: &Value) {
        self.version += 1;
        let response = json!({"version_info": self.version.to_string(), "resources": [resource]});
        let staged = self.dir.path().join("staged.json");
        fs::write(&staged, serde_json::to_vec_pretty(&response).unwrap()).unwrap();
        fs::rename(&staged, self.path()).unwrap();
    }
}

/// The gateway listener as Istio generates it for a Gateway HTTP server (port
/// 0 here), routing the VirtualService's HTTP routes to `router_cluster`, with
/// the WasmPlugin's filter from ECDS (`ecds`) in the AUTHN phase.
pub fn gateway_listener(virtual_service: &Value, plugin: &Value, ecds: &Ecds) -> Value {
    let vs = &virtual_service["spec"];
    let hosts: Vec<Value> = vs["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| [h.clone(), json!(format!("{}:*", h.as_str().unwrap()))])
        .collect();
    let mut routes = Vec::new();
    for r in vs["http"].as_array().unwrap() {
        let dest = &r["route"][0]["destination"];
        let cluster = format!(
            "outbound|{}||{}",
            dest["port"]["number"],
            dest["host"].as_str().unwrap()
        );
        for m in r["match"].as_array().unwrap() {
            let path_match = match (&m["uri"]["exact"], &m["uri"]["prefix"]) {
                (Value::String(p), _) => json!({"path": p}),
                (_, Value::String(p)) => json!({"prefix": p}),
                _ => panic!("unsupported match {m}"),
            };
            // Istio: timeout 0s is "no timeout" (route.timeout 0s); no route
            // idle timeout; no retries when attempts is 0.
            routes.push(json!({
                "name": r["name"],
                "match": path_match,
                "route": {
                    "cluster": cluster,
                    "timeout": r["timeout"].as_str().unwrap_or("0s"),
                    "max_grpc_timeout": "0s",
                },
            }));
        }
    }
    json!({
        "name": format!("0.0.0.0_{GATEWAY_PORT}"),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    // buildGatewayConnectionManager
                    "xff_num_trusted_hops": 0,
                    "forward_client_cert_details": "SANITIZE_SET",
                    "set_current_client_cert_details": {"subject": true, "cert": true, "dns": true, "uri": true},
                    "http_protocol_options": {},
                    // buildHTTPConnectionManager
                    "codec_type": "AUTO",
                    "access_log": [],
                    "stat_prefix": format!("outbound_0.0.0.0_{GATEWAY_PORT}"),
                    "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                    "normalize_path": true,
                    "use_remote_address": true,
                    "upgrade_configs": [{"upgrade_type": "websocket"}],
                    "stream_idle_timeout": "0s",
                    "route_config": {
                        "name": "http.8080",
                        "virtual_hosts": [{"name": "gateway", "domains": hosts, "routes": routes}],
                        "validate_clusters": false,
                    },
                    "http_filters": [
                        // AUTHN phase: the WasmPlugin, by ECDS (extensionfilter.go).
                        {
                            "name": extension_name(plugin),
                            "config_discovery": {
                                "config_source": {
                                    "path_config_source": {
                                        "path": ecds.path().display().to_string(),
                                        "watched_directory": {"path": ecds.watched().display().to_string()},
                                    },
                                    "resource_api_version": "V3",
                                    "initial_fetch_timeout": "0s",
                                },
                                "type_urls": [
                                    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                                ],
                            },
                        },
                        {"name": "envoy.filters.http.grpc_stats", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                            "emit_filter_state": true, "stats_for_all_methods": false}},
                        {"name": "envoy.filters.http.fault", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                        {"name": "envoy.filters.http.cors", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                    ],
                },
            }],
        }],
    })
}

/// The outbound cluster Istio builds for the router Service (no sidecar: plain
/// HTTP/1.1; Istio's default circuit breakers, the maximum), at `router`.
pub fn router_cluster(virtual_service: &Value, router: std::net::SocketAddr) -> Value {
    let dest = &virtual_service["spec"]["http"][0]["route"][0]["destination"];
    let max = u32::MAX;
    json!({
        "name": format!("outbound|{}||{}", dest["port"]["number"], dest["host"].as_str().unwrap()),
        "type": "STATIC",
        "connect_timeout": "10s",
        "circuit_breakers": {"thresholds": [{
            "max_connections": max, "max_pending_requests": max,
            "max_requests": max, "max_retries": max, "track_remaining": true}]},
        "load_assignment": {
            "cluster_name": "router",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": router.ip().to_string(), "port_value": router.port()}}}}]}],
        },
    })
}

/// A bootstrap for the test's Envoy: Istio's node identity (ECDS needs a
/// node), the admin interface on port 0, `listener` and `clusters`.
pub fn bootstrap(listener: &Value, clusters: &[Value]) -> Bootstrap {
    let node = json!({
        "id": "router~127.0.0.1~istio-ingressgateway-test.istio-system~istio-system.svc.cluster.local",
        "cluster": "istio-ingressgateway.istio-system",
    });
    let text = format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\n\
         node: {node}\n\
         static_resources: {resources}\n",
        resources = json!({"listeners": [listener], "clusters": clusters}),
    );
    Bootstrap::from_text("istio-gateway.yaml", text)
}
