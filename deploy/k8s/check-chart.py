#!/usr/bin/env python3
"""Check the Helm chart deploy/k8s/helm/alpn-tunnel offline, with the real tools:

- `helm lint --strict` and `helm template` with every value set in ci/;
- the core objects against Kubernetes' own schemas (kubernetes-validate, strict)
  for two Kubernetes versions; ServiceMonitor, PrometheusRule and BackendConfig
  against their pinned CRD schemas (deploy/k8s/schemas/), unknown fields refused;
- the Pod's configurations with their programs: Envoy's bootstrap with
  `envoy --mode validate` (the built filter loaded), router.toml with
  `alpn-router check`;
- the alert rules with `promtool check rules` and `promtool test rules`, and the
  rendered PrometheusRule's rules with `promtool check rules`;
- cross-file invariants (the timing budget, the health path, the names);
- negative controls: bad values, broken objects and broken copies that must fail.

  check-chart.py --helm HELM --envoy ENVOY --router ALPN_ROUTER --wasm FILTER.wasm

Exit status 1 with every problem listed when anything is wrong.
"""

import argparse
import copy
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CHART = HERE / "helm/alpn-tunnel"
SCHEMAS = HERE / "schemas"
RULES = CHART / "files/alert-rules.yaml"
RULES_TEST = HERE / "alert-rules.test.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion >= 1.27, and
# EKS/GKE's oldest in standard support) and the newest kubectl here speaks.
KUBERNETES_VERSIONS = ["1.30.0", "1.35.0"]
DEFAULT_TYPES = ["alpn", "alpn-ping", "websocket"]
DEFAULT_PATH = "/connectionupgrade"
CRD_FILES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-0.93.0/monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-0.93.0/monitoring.coreos.com_prometheusrules.yaml",
}
BACKENDCONFIG = ("cloud.google.com/v1", "BackendConfig")


class Tools:
    def __init__(self, args, tmp):
        self.helm, self.envoy, self.router, self.wasm = args.helm, args.envoy, args.router, args.wasm
        self.tmp = tmp
        self.crd = {key: strict(crd_schema(SCHEMAS / f)) for key, f in CRD_FILES.items()}
        bc = json.loads((SCHEMAS / "ingress-gce-backendconfig/backendconfig-v1.openapi.json").read_text())
        self.crd[BACKENDCONFIG] = strict(bc)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def helm_template(tools, values_files=(), sets=()):
    """(documents, error): the rendered objects, or helm's message."""
    cmd = [tools.helm, "template", "rel", str(CHART), "--namespace", "tunnels"]
    for f in values_files:
        cmd += ["-f", str(f)]
    for s in sets:
        cmd += ["--set", s]
    r = run(cmd)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return [d for d in yaml.safe_load_all(r.stdout) if d], None


# --- schemas -------------------------------------------------------------------

def crd_schema(path):
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def strict(schema):
    """The schema refusing unknown fields wherever it lists properties, as the
    API server does with `kubectl --validate=strict` (unless the schema keeps
    unknown fields)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(s)
    # metadata is the API server's (ObjectMeta), not the CRD's.
    s.get("properties", {}).pop("metadata", None)
    s["properties"] = {**s.get("properties", {}), "metadata": {"type": "object"}}
    return s


def object_problems(tools, doc):
    key = (doc.get("apiVersion"), doc.get("kind"))
    where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    if key in tools.crd:
        errors = jsonschema.Draft7Validator(tools.crd[key]).iter_errors(doc)
        return [f"{where}: {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in errors]
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            found.append(f"{where} (Kubernetes {version}): {'/'.join(map(str, e.path)) or '.'}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"{where}: no schema for {key} in Kubernetes {version}")
    return found


# --- the Pod's configurations --------------------------------------------------

def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    return found[0] if found else None


def pod_configs(docs):
    cm = one(docs, "ConfigMap")
    return yaml.safe_load(cm["data"]["envoy.yaml"]), tomllib.loads(cm["data"]["router.toml"]), cm


def seconds(text):
    """A duration as the router and the drain subcommand read it ("30s", "5m", "1h30m")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def hcm(envoy):
    (listener,) = envoy["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def filter_json(envoy):
    """The filter's JSON configuration, and its http_filters entry."""
    for f in hcm(envoy)["http_filters"]:
        if f["name"] == "alpn_upgrade":
            wasm = f["typed_config"]
            return json.loads(wasm["config"]["configuration"]["value"] or "{}"), f
    raise KeyError("no alpn_upgrade filter in the bootstrap")


def health_filter(envoy):
    for f in hcm(envoy)["http_filters"]:
        if f["name"] == "envoy.filters.http.health_check":
            return f["typed_config"]
    raise KeyError("no health_check filter in the bootstrap")


def router_cluster(envoy):
    (c,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "alpn_router"]
    return c


def container(docs, name):
    dep = one(docs, "Deployment")
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def prestop_args(docs):
    cmd = container(docs, "router")["lifecycle"]["preStop"]["exec"]["command"]
    if cmd[:2] != ["alpn-router", "drain"]:
        raise ValueError(f"router preStop is not alpn-router drain: {cmd}")
    return dict(zip(cmd[2::2], cmd[3::2]))


def invariants(docs):
    """The cross-file invariants of one rendering; a list of what is wrong."""
    bad = []
    envoy, router, _ = pod_configs(docs)
    filt, filter_entry = filter_json(envoy)
    drain = prestop_args(docs)
    lb_grace, deadline = seconds(drain["--lb-grace"]), seconds(drain["--deadline"])
    router_grace = seconds(router.get("limits", {}).get("drain_grace", "30s"))
    # The deadline counts from the drain's start; adding lb grace over-covers it.
    drain_total = lb_grace + deadline + router_grace
    if deadline <= lb_grace:
        bad.append(f"drain deadline {deadline} s is not above the lb grace {lb_grace} s")
    dep = one(docs, "Deployment")
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if grace < drain_total:
        bad.append(f"terminationGracePeriodSeconds {grace} < lb grace {lb_grace} + deadline {deadline} "
                   f"+ router drain_grace {router_grace}")

    # Envoy's admin: loopback only, where the drain posts to.
    admin = envoy["admin"]["address"]["socket_address"]
    if admin["address"] != "127.0.0.1":
        bad.append(f"Envoy admin on {admin['address']}, not 127.0.0.1")
    if drain["--envoy-admin"] != f"http://127.0.0.1:{admin['port_value']}":
        bad.append(f"preStop --envoy-admin {drain['--envoy-admin']} is not Envoy's admin port {admin['port_value']}")
    metrics_port = int(router["metrics"]["listen"].rsplit(":", 1)[1])
    if drain["--metrics"] != f"http://127.0.0.1:{metrics_port}":
        bad.append(f"preStop --metrics {drain['--metrics']} is not the router's metrics port {metrics_port}")
    envoy_args = container(docs, "envoy")["args"]
    drain_time = int(envoy_args[envoy_args.index("--drain-time-s") + 1])
    if drain_time > deadline:
        bad.append(f"Envoy --drain-time-s {drain_time} is longer than the drain deadline {deadline}")

    # One health path: Envoy's health_check filter, the Envoy readiness probe,
    # the ALB and GKE health checks; and it covers the router's readiness.
    hc = health_filter(envoy)
    if hc.get("pass_through_mode") is not False:
        bad.append("health_check filter: pass_through_mode must be false")
    (header,) = hc["headers"]
    health_path = header["string_match"]["exact"]
    if hc.get("cluster_min_healthy_percentages", {}).get("alpn_router", {}).get("value") != 100:
        bad.append("health_check filter: cluster_min_healthy_percentages must hold alpn_router at 100")
    cluster = router_cluster(envoy)
    checks = cluster.get("health_checks", [])
    if not checks or checks[0]["http_health_check"]["path"] != "/readyz":
        bad.append("alpn_router cluster: no active health check of /readyz")
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    if endpoint.get("health_check_config", {}).get("port_value") != metrics_port:
        bad.append("alpn_router cluster: the health check does not go to the router's metrics port")
    upgrade_port = int(router["upgrade"]["listen"].rsplit(":", 1)[1])
    if endpoint["address"]["socket_address"]["port_value"] != upgrade_port:
        bad.append("alpn_router cluster: the endpoint is not the router's upgrade listener")
    probe = container(docs, "envoy")["readinessProbe"]["httpGet"]["path"]
    if probe != health_path:
        bad.append(f"Envoy readiness probe path {probe} is not the health path {health_path}")
    ing = one(docs, "Ingress")
    if ing:
        a = ing["metadata"]["annotations"]
        if a.get("alb.ingress.kubernetes.io/healthcheck-path") != health_path:
            bad.append(f"Ingress health check path {a.get('alb.ingress.kubernetes.io/healthcheck-path')} "
                       f"is not Envoy's health path {health_path}")
        for k, want in [("target-type", "ip"), ("backend-protocol-version", "HTTP1")]:
            if a.get("alb.ingress.kubernetes.io/" + k) != want:
                bad.append(f"Ingress: alb.ingress.kubernetes.io/{k} must be {want}")
        idle = int(re.search(r"idle_timeout\.timeout_seconds=(\d+)",
                             a["alb.ingress.kubernetes.io/load-balancer-attributes"])[1])
        ping = seconds(router["upgrade"].get("ping_interval", "30s"))
        if idle <= ping:
            bad.append(f"ALB idle timeout {idle} s is not above the router's ping interval {ping} s")
        dereg = int(re.search(r"deregistration_delay\.timeout_seconds=(\d+)",
                              a["alb.ingress.kubernetes.io/target-group-attributes"])[1])
        if dereg < drain_total:
            bad.append(f"ALB deregistration delay {dereg} s is shorter than the drain {drain_total} s")
        hc_every = int(a["alb.ingress.kubernetes.io/healthcheck-interval-seconds"])
        hc_fails = int(a["alb.ingress.kubernetes.io/unhealthy-threshold-count"])
        if lb_grace < hc_every * hc_fails:
            bad.append(f"lb grace {lb_grace} s is shorter than the ALB needs to see the target "
                       f"unhealthy ({hc_fails} checks every {hc_every} s)")
    bc = one(docs, "BackendConfig")
    if bc:
        if bc["spec"]["healthCheck"]["requestPath"] != health_path:
            bad.append("BackendConfig health check path is not Envoy's health path")
        if bc["spec"]["connectionDraining"]["drainingTimeoutSec"] < drain_total:
            bad.append("BackendConfig connection draining is shorter than the drain")
        h = bc["spec"]["healthCheck"]
        if lb_grace < h["checkIntervalSec"] * h["unhealthyThreshold"]:
            bad.append("lb grace is shorter than GKE's health check needs to see the target unhealthy")
    hpa = one(docs, "HorizontalPodAutoscaler")
    if hpa:
        down = hpa["spec"]["behavior"]["scaleDown"]
        if any(p["type"] != "Pods" or p["periodSeconds"] < deadline for p in down["policies"]):
            bad.append(f"HPA scale-down policies {down['policies']} remove Pods faster than one per drain deadline")

    # The names: Envoy's upgrade types cover the filter's allowed types; the
    # upgrade route's path is the filter's (and the router's) upgrade path.
    listed = [u["upgrade_type"] for u in hcm(envoy)["upgrade_configs"]]
    allowed = filt.get("allowed_types", DEFAULT_TYPES)
    missing = [t for t in allowed if t not in listed]
    if missing:
        bad.append(f"Envoy's upgrade_configs {listed} miss the filter's allowed types {missing}")
    paths = filt.get("upgrade_paths", [DEFAULT_PATH])
    routes = hcm(envoy)["route_config"]["virtual_hosts"][0]["routes"]
    (route,) = [r for r in routes if r.get("name") == "alpn_tunnel_upgrade"]
    if route["match"].get("path") not in paths or route["route"]["cluster"] != "alpn_router":
        bad.append(f"the upgrade route {route['match']} is not the filter's upgrade path {paths}")
    # The filter is off by default and on where a request can concern it: the
    # upgrade route, and the routes refusing its upgrades and header elsewhere.
    if filter_entry.get("disabled") is not True:
        bad.append("the alpn_upgrade filter is not disabled by default")
    enabled = [r.get("name") for r in routes if "alpn_upgrade" in r.get("typed_per_filter_config", {})]
    if "alpn_tunnel_upgrade" not in enabled:
        bad.append(f"the filter is not enabled on the upgrade route (enabled on {enabled})")
    dup = filt.get("duplicate_upgrade_header", "x-alpn-upgrade").lower()
    headers = [h["name"] for r in routes if r.get("name") == "alpn_tunnel_duplicate_header_elsewhere"
               for h in r["match"].get("headers", [])]
    if headers != [dup]:
        bad.append(f"the duplicate-header route matches {headers}, the filter's header is {dup}")
    if health_path in paths:
        bad.append(f"the health path {health_path} is an upgrade path")
    names = router["upgrade"].get("names", {})
    for key in ["upgrade_paths", "type_tokens", "allowed_types", "subprotocol_tokens",
                "websocket_subprotocols", "duplicate_upgrade_header", "client_addr_header"]:
        if names.get(key) != filt.get(key):
            bad.append(f"router [upgrade.names] {key} = {names.get(key)!r}, the filter's is {filt.get(key)!r}")
    svc = one(docs, "Service")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    if ports["metrics"]["port"] != metrics_port:
        bad.append("Service metrics port is not the router's metrics port")
    return bad


def program_problems(tools, docs, name):
    """Envoy and the router load the rendered configurations."""
    bad = []
    work = tools.tmp / name
    work.mkdir()
    envoy, _, cm = pod_configs(docs)
    text = cm["data"]["envoy.yaml"]
    (wasm_path,) = re.findall(r"^ +filename: (\S+\.wasm)$", text, re.M)
    (work / "envoy.yaml").write_text(text.replace(wasm_path, str(tools.wasm)))
    r = run([tools.envoy, "--mode", "validate", "-c", str(work / "envoy.yaml"), "--log-level", "error"])
    if r.returncode != 0 or "OK" not in r.stdout:
        bad.append(f"envoy --mode validate refused envoy.yaml: {(r.stdout + r.stderr).strip()[-600:]}")
    # The router reads its certificates: the mounted Secrets' paths moved here.
    toml = cm["data"]["router.toml"]
    for path in sorted(set(re.findall(r'"(/etc/alpn-router/[^"]+)"', toml))):
        local = work / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tools.tmp / ("tls.key" if path.endswith(".key") else "tls.crt"), local)
        toml = toml.replace(f'"{path}"', f'"{local}"')
    (work / "router.toml").write_text(toml)
    r = run([tools.router, "check", "--config", str(work / "router.toml")])
    if r.returncode != 0:
        bad.append(f"alpn-router check refused router.toml: {(r.stdout + r.stderr).strip()}")
    return bad


def promtool_problems(tools, docs, name):
    rule = one(docs, "PrometheusRule")
    if not rule:
        return []
    f = tools.tmp / f"{name}-rules.yaml"
    f.write_text(yaml.safe_dump(rule["spec"]))
    r = run(["promtool", "check", "rules", str(f)])
    return [] if r.returncode == 0 else [f"promtool check rules refused the PrometheusRule: {r.stdout}{r.stderr}"]


def check_value_set(tools, values):
    name = values.stem
    docs, err = helm_template(tools, [values])
    if err:
        return [f"{name}: helm template failed: {err}"], None
    bad = []
    for doc in docs:
        bad += object_problems(tools, doc)
    bad += invariants(docs)
    bad += program_problems(tools, docs, name)
    bad += promtool_problems(tools, docs, name)
    return [f"{name}: {b}" for b in bad], docs


# --- negative controls ---------------------------------------------------------

def negative_controls(tools, docs):
    """Each must be refused; a list of those that were not."""
    ci = CHART / "ci/minimal-values.yaml"
    escaped = []
    # Each with what helm's refusal must say, so that it fails for that reason.
    bad_values = {
        "an unknown value key": (["envoy.listenPort=8080"], "additional properties 'listenPort'"),
        "an unknown key in the filter's configuration": (["filter.config.trusted_hop=1"], "'trusted_hop' not allowed"),
        "rate_limit.upgrades 0": (["filter.config.rate_limit.upgrades=0", "filter.config.rate_limit.per_seconds=1"],
                                  "/filter/config/rate_limit/upgrades"),
        "trusted_proxies with trusted_hops 0": (["filter.config.trusted_hops=0"], "at '/filter/config': 'not' failed"),
        "an upgrade path with a query": (["filter.config.upgrade_paths={/x?y}"], "/filter/config/upgrade_paths/0"),
        "two upgrade paths": (["filter.config.upgrade_paths={/a,/b}"], "the chart routes exactly one upgrade path"),
        "renamed upgrade types": (["filter.config.type_tokens.alpn=tcp"], "renamed types are not supported"),
        "an upgrade type token with a space": (["filter.config.allowed_types={al pn}"], "/filter/config/allowed_types/0"),
        "a grace period shorter than the drain": (["terminationGracePeriodSeconds=300"], "is shorter than the drain"),
        "a drain deadline within the lb grace": (["drain.lbGraceSeconds=30", "drain.deadlineSeconds=20"],
                                                 "must be above drain.lbGraceSeconds"),
        "an ALB idle timeout below the ping interval": (["ingress.enabled=true", "ingress.idleTimeoutSeconds=30"],
                                                        "must be above router.pingIntervalSeconds"),
        "an ALB deregistration delay shorter than the drain": (
            ["ingress.enabled=true", "ingress.deregistrationDelaySeconds=60"], "the ALB would cut tunnels"),
        "GKE connection draining shorter than the drain": (
            ["backendConfig.enabled=true", "backendConfig.drainingTimeoutSec=60"], "drainingTimeoutSec: 60 is shorter"),
        "a route without a backend": (["router.routes[0].alpn=postgresql"], "missing property 'backend'"),
        "a duration the router cannot read": (["router.limits.connect_timeout=5 seconds"], "/router/limits/connect_timeout"),
    }
    for what, (sets, expect) in bad_values.items():
        got, err = helm_template(tools, [ci], sets)
        if got is not None:
            escaped.append(f"helm template accepted {what}")
        elif expect not in err:
            escaped.append(f"helm template refused {what}, but not for that reason: {err}")
    got, err = helm_template(tools, [], [])
    if got is not None or "filter.config.trusted_proxies: required" not in (err or ""):
        escaped.append(f"helm template did not refuse the defaults for want of trusted_proxies: {err}")

    def object_refusal(doc, mutate):
        broken = copy.deepcopy(doc)
        mutate(broken)
        return "\n".join(object_problems(tools, broken))

    # Each broken object with what the refusal must name.
    broken_objects = {
        "Deployment": ("an unknown container field", "preStopp",
                       lambda d: d["spec"]["template"]["spec"]["containers"][0].update(preStopp={})),
        "Service": ("a port as a string", "ports/0/port", lambda d: d["spec"]["ports"][0].update(port="eighty")),
        "HorizontalPodAutoscaler": ("an unknown behavior field", "window",
                                    lambda d: d["spec"]["behavior"]["scaleDown"].update(window=1)),
        "ServiceMonitor": ("an unknown endpoint field", "pathh",
                           lambda d: d["spec"]["endpoints"][0].update(pathh="/metrics")),
        "PrometheusRule": ("a rule without expr", "'expr' is a required property",
                           lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr")),
        "BackendConfig": ("timeoutSecs for timeoutSec", "timeoutSecs",
                          lambda d: d["spec"].update(timeoutSecs=d["spec"].pop("timeoutSec"))),
        "Ingress": ("pathType as a number", "pathType",
                    lambda d: d["spec"]["rules"][0]["http"]["paths"][0].update(pathType=1)),
    }
    for kind, (what, expect, mutate) in broken_objects.items():
        doc = one(docs, kind)
        if doc is None:
            escaped.append(f"no {kind} rendered to break")
            continue
        refusal = object_refusal(doc, mutate)
        if not refusal:
            escaped.append(f"the {kind} schema accepted {what}")
        elif expect not in refusal:
            escaped.append(f"the {kind} schema refused {what}, but not for that reason: {refusal}")

    def invariant_refusal(mutate):
        broken = copy.deepcopy(docs)
        mutate(broken)
        return "\n".join(invariants(broken))

    def envoy_edit(edit):
        def mutate(ds):
            cm = one(ds, "ConfigMap")
            envoy = yaml.safe_load(cm["data"]["envoy.yaml"])
            edit(envoy)
            cm["data"]["envoy.yaml"] = yaml.safe_dump(envoy)
        return mutate

    def annotate(key, value):
        return lambda ds: one(ds, "Ingress")["metadata"]["annotations"].update({"alb.ingress.kubernetes.io/" + key: value})

    # Each broken rendering with what the invariants must say about it.
    broken_renders = {
        "a grace period shorter than the drain": ("terminationGracePeriodSeconds 60 <", lambda ds: one(
            ds, "Deployment")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=60)),
        "an Ingress health check path other than Envoy's": ("Ingress health check path /readyz",
                                                           annotate("healthcheck-path", "/readyz")),
        "an ALB idle timeout below the ping interval": ("ALB idle timeout 20 s", annotate(
            "load-balancer-attributes", "idle_timeout.timeout_seconds=20")),
        "a deregistration delay shorter than the drain": ("ALB deregistration delay 30 s", annotate(
            "target-group-attributes", "deregistration_delay.timeout_seconds=30")),
        "upgrade_configs without websocket": ("miss the filter's allowed types ['websocket']", envoy_edit(
            lambda e: hcm(e).update(upgrade_configs=[{"upgrade_type": "alpn"}, {"upgrade_type": "alpn-ping"}]))),
        "an upgrade route on another path": ("is not the filter's upgrade path", envoy_edit(
            lambda e: hcm(e)["route_config"]["virtual_hosts"][0]["routes"][0]["match"].update(path="/elsewhere"))),
        "a health filter in pass-through mode": ("pass_through_mode must be false", envoy_edit(
            lambda e: health_filter(e).update(pass_through_mode=True))),
        "Envoy's admin on every address": ("Envoy admin on 0.0.0.0", envoy_edit(
            lambda e: e["admin"]["address"]["socket_address"].update(address="0.0.0.0"))),
        "the filter on for every request": ("not disabled by default", envoy_edit(
            lambda e: filter_json(e)[1].pop("disabled"))),
        "the filter off on the upgrade route": ("not enabled on the upgrade route", envoy_edit(
            lambda e: hcm(e)["route_config"]["virtual_hosts"][0]["routes"][0].pop("typed_per_filter_config"))),
        "a router health check off /readyz": ("no active health check of /readyz", envoy_edit(
            lambda e: router_cluster(e)["health_checks"][0]["http_health_check"].update(path="/healthz"))),
    }
    for what, (expect, mutate) in broken_renders.items():
        refusal = invariant_refusal(mutate)
        if not refusal:
            escaped.append(f"the invariants accepted {what}")
        elif expect not in refusal:
            escaped.append(f"the invariants refused {what}, but not for that reason: {refusal}")

    # envoy/render.py refuses a `# replace` that would change nothing or sits
    # apart from its marker, so the chart's bootstrap cannot silently lose one.
    spec = importlib.util.spec_from_file_location("render", HERE.parent.parent / "envoy/render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    frag = render.pieces(render.FRAGMENT.read_text())
    bootstrap = render.CHART_BOOTSTRAP.read_text()
    indent, marker = re.search(r"^( *)(# BEGIN fragment\.yaml routes\n)", bootstrap, re.M).groups()
    marker = indent + marker

    def above_marker(line):
        return bootstrap.replace("\n" + marker, "\n" + line + "\n" + marker)
    broken_bootstraps = {
        "a replace whose text is not in the piece": ("does not occur in piece 'routes'", above_marker(
            indent + "# replace {path: /nowhere} => {path: /x}")),
        "a replace indented apart from its marker": ("must be indented like its marker", above_marker(
            indent[2:] + "# replace {path: /connectionupgrade} => {path: /x}")),
    }
    for what, (expect, text) in broken_bootstraps.items():
        f = tools.tmp / "broken-envoy.yaml"
        f.write_text(text)
        try:
            render.render(f, frag)
            escaped.append(f"render.py accepted {what}")
        except SystemExit as e:
            if expect not in str(e):
                escaped.append(f"render.py refused {what}, but not for that reason: {e}")

    # promtool's unit tests fail on rules that do not do what they say.
    broken = tools.tmp / "broken-rules"
    broken.mkdir()
    rules = RULES.read_text()
    (broken / "helm/alpn-tunnel/files").mkdir(parents=True)
    (broken / "helm/alpn-tunnel/files/alert-rules.yaml").write_text(rules.replace("0.9 * 10000", "0.99 * 10000"))
    shutil.copy(RULES_TEST, broken / "test.yaml")
    if run(["promtool", "test", "rules", "test.yaml"], cwd=broken).returncode == 0:
        escaped.append("promtool test rules passed rules with the wrong cap threshold")
    return escaped, len(bad_values) + 1 + len(broken_objects) + len(broken_renders) + len(broken_bootstraps) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--helm", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--router", required=True)
    ap.add_argument("--wasm", required=True, type=pathlib.Path)
    args = ap.parse_args()
    problems = []
    with tempfile.TemporaryDirectory(prefix="check-chart-") as tmp:
        tmp = pathlib.Path(tmp)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", tmp / "tls.key", "-out", tmp / "tls.crt", "-subj", "/CN=router.test",
                        "-days", "1"], check=True, capture_output=True)
        tools = Tools(args, tmp)
        value_sets = sorted((CHART / "ci").glob("*-values.yaml"))
        for values in value_sets:
            r = run([args.helm, "lint", "--strict", str(CHART), "-f", str(values)])
            if r.returncode != 0:
                problems.append(f"helm lint --strict -f {values.name}: {r.stdout}{r.stderr}")
        rendered = {}
        for values in value_sets:
            found, docs = check_value_set(tools, values)
            problems += found
            if docs:
                rendered[values.stem] = docs
        for cmd in (["promtool", "check", "rules", str(RULES)], ["promtool", "test", "rules", str(RULES_TEST)]):
            r = run(cmd)
            if r.returncode != 0:
                problems.append(f"{' '.join(cmd[:3])}: {r.stdout}{r.stderr}")
        n_controls = 0
        if "renamed-values" in rendered:
            escaped, n_controls = negative_controls(tools, rendered["renamed-values"])
            problems += [f"negative control: {e}" for e in escaped]
        else:
            problems.append("negative controls not run: ci/renamed-values.yaml did not render")
    if problems:
        sys.exit("chart check failed:\n  " + "\n  ".join(problems))
    kinds = sorted({d["kind"] for docs in rendered.values() for d in docs})
    print(f"chart: {len(value_sets)} value sets linted, rendered and valid ({', '.join(kinds)}; core objects "
          f"against Kubernetes {' and '.join(KUBERNETES_VERSIONS)}, CRD kinds against their pinned schemas); "
          f"envoy.yaml loaded by Envoy and router.toml by alpn-router for each; invariants hold; alert rules "
          f"pass promtool; {n_controls} negative controls refused")


if __name__ == "__main__":
    main()
