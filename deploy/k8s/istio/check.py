#!/usr/bin/env python3
"""Offline validation of the Istio manifests in deploy/k8s/istio/ (make test).

No cluster and no Istio here, so every object is checked against the real
schemas, and what must agree across files is checked for agreement:

  1. Istio's kinds against the CRD schemas of the pinned Istio release
     (deploy/k8s/schemas/istio-*/crd-all.gen.yaml), made strict: an object that
     lists its properties accepts no others, unless the schema says
     x-kubernetes-preserve-unknown-fields (as EnvoyFilter's patch value does).
     The CRDs' CEL rules (x-kubernetes-validations) are not evaluated here.
  2. Kubernetes' own kinds with kubernetes-validate, strict, against each of
     KUBERNETES_VERSIONS.
  3. Cross-file invariants: the WasmPlugin's sha256 is the digest of the image
     built from the built filter (and digest.txt's); the EnvoyFilter's upgrade
     types plus Istio's websocket cover the filter's allowed_types, with no type
     twice (Envoy rejects such a listener); the VirtualService routes exactly
     the filter's upgrade paths to the router's upgrade port, with no timeout;
     the router's configured path is the same; the EnvoyFilter's
     local_reply_config and skip_xff_append are the fragment's; the WasmPlugin
     and the EnvoyFilter select the same gateway and listener port.
  4. Negative controls: broken copies of the manifests, each of which must be
     refused by the check meant to catch it (else that check proves nothing).

  check.py [--wasm FILE]   exit 1 with every problem named
"""

import argparse
import copy
import hashlib
import pathlib
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, str(ROOT / "deploy" / "k8s" / "image"))
import build  # noqa: E402  (deploy/k8s/image/build.py)

HERE = ROOT / "deploy" / "k8s" / "istio"
ISTIO_VERSION = "1.30.3"
CRDS = ROOT / "deploy" / "k8s" / "schemas" / f"istio-{ISTIO_VERSION}" / "crd-all.gen.yaml"
FRAGMENT = ROOT / "envoy" / "fragment.yaml"
DIGEST = ROOT / "deploy" / "k8s" / "image" / "digest.txt"
WASM = ROOT / "target" / "wasm32-wasip1" / "wasm-release" / "alpn_upgrade_filter.wasm"
KUBERNETES_VERSIONS = ["1.31.0", "1.35.0"]
MANIFESTS = ["wasmplugin.yaml", "envoyfilter.yaml", "gateway.yaml", "router.yaml"]
# Istio's own upgrade types on every connection manager it generates.
ISTIO_UPGRADE_TYPES = ["websocket"]
# The filter's defaults (README.md, "Filter configuration").
DEFAULT_ALLOWED_TYPES = ["alpn", "alpn-ping", "websocket"]
DEFAULT_UPGRADE_PATHS = ["/connectionupgrade"]
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def strict(schema):
    """A copy of a CRD schema that refuses properties it does not list."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crds():
    """(apiVersion, kind) -> strict schema, for every served version."""
    out = {}
    for crd in yaml.safe_load_all(CRDS.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[(f"{group}/{v['name']}", kind)] = strict(v["schema"]["openAPIV3Schema"])
    return out


def load_manifests():
    """file name -> list of objects."""
    return {name: [d for d in yaml.safe_load_all((HERE / name).read_text()) if d] for name in MANIFESTS}


def schema_errors(objects, crds):
    """Every object: Istio's kinds against the CRDs, the rest with kubernetes-validate."""
    errors = []
    for name, docs in objects.items():
        for obj in docs:
            where = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            key = (obj.get("apiVersion"), obj.get("kind"))
            if key[0] and key[0].split("/")[0].endswith("istio.io"):
                schema = crds.get(key)
                if schema is None:
                    errors.append(f"{where}: {key} is not served by Istio {ISTIO_VERSION}")
                    continue
                body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
                for e in jsonschema.Draft7Validator(schema).iter_errors(body):
                    path = ".".join(str(p) for p in e.absolute_path) or "(top)"
                    errors.append(f"{where}: {path}: {e.message}")
                meta = obj.get("metadata", {})
                if not meta.get("name") or not meta.get("namespace"):
                    errors.append(f"{where}: metadata needs a name and a namespace")
            else:
                for version in KUBERNETES_VERSIONS:
                    try:
                        kubernetes_validate.validate(obj, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        path = ".".join(str(p) for p in e.path) or "(top)"
                        errors.append(f"{where}: Kubernetes {version}: {path}: {e.message}")
                    except kubernetes_validate.utils.SchemaNotFoundError as e:
                        errors.append(f"{where}: Kubernetes {version}: no schema: {e}")
    return errors


def one(objects, name, kind):
    found = [o for o in objects[name] if o["kind"] == kind]
    if len(found) != 1:
        raise SystemExit(f"{name}: expected one {kind}, found {len(found)}")
    return found[0]


def invariant_errors(objects, module, fragment):
    """What must agree across files."""
    errors = []
    plugin = one(objects, "wasmplugin.yaml", "WasmPlugin")["spec"]
    envoyfilter = one(objects, "envoyfilter.yaml", "EnvoyFilter")["spec"]
    gateway = one(objects, "gateway.yaml", "Gateway")["spec"]
    vs = one(objects, "gateway.yaml", "VirtualService")["spec"]
    service = one(objects, "router.yaml", "Service")
    deployment = one(objects, "router.yaml", "Deployment")
    router_toml = tomllib.loads(one(objects, "router.yaml", "ConfigMap")["data"]["router.toml"])
    config = plugin.get("pluginConfig", {})

    # The image Istio will pull is the one built from this filter.
    _, manifest = build.image(module)
    digest = hashlib.sha256(manifest).hexdigest()
    if plugin.get("sha256") != digest:
        errors.append(f"wasmplugin.yaml: sha256 {plugin.get('sha256')} is not the built image's digest "
                      f"{digest} (run: make k8s-istio-refresh)")
    if f"manifest sha256:{digest}" not in DIGEST.read_text().splitlines():
        errors.append(f"{DIGEST.relative_to(ROOT)}: does not name the built image's digest sha256:{digest}")
    url = plugin.get("url", "")
    if not url.startswith("oci://") or ":" not in url.removeprefix("oci://").split("/")[-1]:
        errors.append(f"wasmplugin.yaml: url {url!r} is not oci://REGISTRY/NAME:TAG")
    for key, want in [("phase", "AUTHN"), ("failStrategy", "FAIL_CLOSE"), ("type", "HTTP")]:
        if plugin.get(key) != want:
            errors.append(f"wasmplugin.yaml: {key} must be {want}, is {plugin.get(key)!r}")

    # The connection manager must know every type the filter approves, once.
    patches = [p for p in envoyfilter["configPatches"] if p["applyTo"] == "NETWORK_FILTER"]
    hcm = [p["patch"]["value"]["typed_config"] for p in patches
           if p["patch"]["value"].get("typed_config", {}).get("@type") == HCM_TYPE]
    if len(hcm) != 1:
        errors.append(f"envoyfilter.yaml: expected one MERGE into the connection manager, found {len(hcm)}")
        return errors
    hcm = hcm[0]
    added = [u["upgrade_type"] for u in hcm.get("upgrade_configs", [])]
    listed = ISTIO_UPGRADE_TYPES + added
    twice = sorted({t for t in listed if listed.count(t) > 1})
    if twice:
        errors.append(f"envoyfilter.yaml: upgrade types {twice} listed twice once merged into Istio's "
                      f"{ISTIO_UPGRADE_TYPES} (Envoy rejects the listener: multiple upgrade configs with the same name)")
    allowed = config.get("allowed_types", DEFAULT_ALLOWED_TYPES)
    missing = [t for t in allowed if t not in listed]
    if missing:
        errors.append(f"envoyfilter.yaml: allowed_types {missing} of the WasmPlugin are not upgrade types "
                      f"of the connection manager ({listed}): Envoy would refuse them before the filter runs")

    # The refusals and the client address as the fragment has them.
    frag_hcm = yaml.safe_load(fragment)["http_connection_manager"]
    for key in ("local_reply_config", "skip_xff_append"):
        if hcm.get(key) != frag_hcm[key]:
            errors.append(f"envoyfilter.yaml: {key} differs from envoy/fragment.yaml's (run: make k8s-istio-refresh)")

    # Both pieces on the same gateway and listener.
    selector = envoyfilter.get("workloadSelector", {}).get("labels")
    if plugin.get("selector", {}).get("matchLabels") != selector or gateway.get("selector") != selector:
        errors.append(f"the WasmPlugin's selector, the EnvoyFilter's workloadSelector and the Gateway's "
                      f"selector must name the same gateway: {plugin.get('selector')}, {selector}, {gateway.get('selector')}")
    ports = {p["match"]["listener"]["portNumber"] for p in patches}
    plugin_ports = {pp["number"] for m in plugin.get("match", []) for pp in m.get("ports", [])}
    modes = {m.get("mode", "UNDEFINED") for m in plugin.get("match", [])}
    if plugin_ports != ports:
        errors.append(f"the WasmPlugin matches ports {sorted(plugin_ports)}, the EnvoyFilter patches {sorted(ports)}")
    if not modes <= {"CLIENT", "CLIENT_AND_SERVER", "UNDEFINED"}:
        errors.append(f"wasmplugin.yaml: match mode {sorted(modes)} never matches a gateway listener (Istio: CLIENT)")

    # The upgrade paths go to the router, and only they.
    paths = config.get("upgrade_paths", DEFAULT_UPGRADE_PATHS)
    upgrade_port = int(router_toml["upgrade"]["listen"].rsplit(":", 1)[1])
    svc_port = {p["name"]: p for p in service["spec"]["ports"]}.get("http-upgrade", {})
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    routed = []
    for route in vs.get("http", []):
        dests = [d["destination"] for d in route.get("route", [])]
        if not any(d["host"] == host for d in dests):
            continue
        for m in route.get("match", []):
            uri = m.get("uri", {})
            if set(uri) != {"exact"} or uri["exact"] not in paths:
                errors.append(f"gateway.yaml: the VirtualService sends {uri} to the router: not an upgrade path {paths}")
            else:
                routed.append(uri["exact"])
        for d in dests:
            if d.get("port", {}).get("number") != svc_port.get("port"):
                errors.append(f"gateway.yaml: the router's port is {svc_port.get('port')}, the route says {d.get('port')}")
        if route.get("timeout") != "0s":
            errors.append(f"gateway.yaml: the route to the router needs timeout 0s (a tunnel lasts), has {route.get('timeout')!r}")
    if sorted(routed) != sorted(paths):
        errors.append(f"gateway.yaml: upgrade paths {paths} must each be routed to {host}; routed: {routed}")
    if router_toml["upgrade"].get("path", "/connectionupgrade") not in paths:
        errors.append(f"router.yaml: the router serves {router_toml['upgrade'].get('path')}, not an upgrade path {paths}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if upgrade_port not in [p["containerPort"] for p in container["ports"]]:
        errors.append(f"router.yaml: the router listens on {upgrade_port}, which is no containerPort")
    if deployment["spec"]["template"]["metadata"].get("labels", {}).get("sidecar.istio.io/inject") != "false":
        errors.append("router.yaml: the router Pod must carry sidecar.istio.io/inject: \"false\"")
    return errors


def broken_copies(objects):
    """(what, check, objects): copies with one mistake each."""
    def edit(fn):
        o = copy.deepcopy(objects)
        fn(o)
        return o

    def spec(o, name, kind):
        return one(o, name, kind)["spec"]

    def hcm(o):
        return spec(o, "envoyfilter.yaml", "EnvoyFilter")["configPatches"][0]["patch"]["value"]["typed_config"]

    def container(o):
        return spec(o, "router.yaml", "Deployment")["template"]["spec"]["containers"][0]

    return [
        ("an unknown field in the WasmPlugin", "schema",
         edit(lambda o: spec(o, "wasmplugin.yaml", "WasmPlugin").update(failStrategyy="FAIL_CLOSE"))),
        ("an unknown field in the VirtualService's route", "schema",
         edit(lambda o: spec(o, "gateway.yaml", "VirtualService")["http"][0].update(idleTimeout="0s"))),
        ("a wrong type (a port number as a string) in the WasmPlugin", "schema",
         edit(lambda o: spec(o, "wasmplugin.yaml", "WasmPlugin")["match"][0]["ports"][0].update(number="8080"))),
        ("a phase Istio does not know", "schema",
         edit(lambda o: spec(o, "wasmplugin.yaml", "WasmPlugin").update(phase="AUTHENTICATION"))),
        ("an unknown field in the Deployment's container", "schema",
         edit(lambda o: container(o).update(readinessProbes=container(o)["readinessProbe"]))),
        ("a wrong type in the Service (port as a string)", "schema",
         edit(lambda o: spec(o, "router.yaml", "Service")["ports"][0].update(port="9001"))),
        ("a sha256 that is not the image's digest (the module's hash)", "invariants",
         edit(lambda o: spec(o, "wasmplugin.yaml", "WasmPlugin").update(
             sha256=hashlib.sha256(WASM.read_bytes()).hexdigest()))),
        ("the upgrade type alpn-ping missing from the EnvoyFilter", "invariants",
         edit(lambda o: hcm(o).update(upgrade_configs=[{"upgrade_type": "alpn"}]))),
        ("websocket listed again in the EnvoyFilter", "invariants",
         edit(lambda o: hcm(o)["upgrade_configs"].append({"upgrade_type": "websocket"}))),
        ("a VirtualService path that is not the upgrade path", "invariants",
         edit(lambda o: spec(o, "gateway.yaml", "VirtualService")["http"][0]["match"][0].update(
             uri={"prefix": "/connection"}))),
        ("a route timeout on the tunnels", "invariants",
         edit(lambda o: spec(o, "gateway.yaml", "VirtualService")["http"][0].update(timeout="15s"))),
        ("a local_reply_config that drifted from the fragment", "invariants",
         edit(lambda o: hcm(o)["local_reply_config"]["mappers"][1].update(status_code=403))),
        ("the WasmPlugin on a server-side listener (mode SERVER)", "invariants",
         edit(lambda o: spec(o, "wasmplugin.yaml", "WasmPlugin")["match"][0].update(mode="SERVER"))),
        ("a router Pod with the sidecar", "invariants",
         edit(lambda o: spec(o, "router.yaml", "Deployment")["template"]["metadata"]["labels"].pop(
             "sidecar.istio.io/inject"))),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", type=pathlib.Path, default=WASM, help="the built filter")
    a = p.parse_args()
    if not a.wasm.exists():
        sys.exit(f"{a.wasm} is missing: run `make build` first")
    module, fragment = a.wasm.read_bytes(), FRAGMENT.read_text()
    crds, objects = load_crds(), load_manifests()
    checks = {
        "schema": lambda o: schema_errors(o, crds),
        "invariants": lambda o: invariant_errors(o, module, fragment),
    }
    errors = checks["schema"](objects) + checks["invariants"](objects)
    count = sum(len(d) for d in objects.values())
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(f"{len(errors)} problem(s) in deploy/k8s/istio/")
    istio = sum(o["apiVersion"].split("/")[0].endswith("istio.io") for d in objects.values() for o in d)
    print(f"valid: {count} objects ({istio} against Istio {ISTIO_VERSION}'s CRDs, strict; {count - istio} "
          f"with kubernetes-validate {', '.join(KUBERNETES_VERSIONS)}, strict); invariants hold")

    # Each broken copy must be refused, by the check meant to catch it.
    missed = []
    for what, check, broken in broken_copies(objects):
        found = checks[check](broken)
        if not found:
            missed.append(what)
        else:
            print(f"refused as it must be: {what}: {found[0]}")
    if missed:
        sys.exit("negative controls NOT refused (the check proves nothing): " + "; ".join(missed))


if __name__ == "__main__":
    main()
