#!/usr/bin/env python3
"""Fill the Istio manifests from their sources, or check that they match them.

  - envoyfilter.yaml, between its "generated from envoy/fragment.yaml" markers:
    the fragment's http_connection_manager piece as Istio lacks it (the upgrade
    types but websocket, which Istio sets itself; skip_xff_append;
    local_reply_config);
  - the filter's OCI image (deploy/k8s/image/build.py) written to
    target/oci/alpn-upgrade-filter from the built .wasm, its digest into
    deploy/k8s/image/digest.txt and into wasmplugin.yaml's sha256.

  render.py          rewrite them in place (make k8s-istio-refresh)
  render.py --check  exit 1 naming what differs (make test runs it)

Any change to the filter's code changes the module, so the digest: run
`make k8s-istio-refresh` and commit the result with the change.
"""

import argparse
import hashlib
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, str(ROOT / "deploy" / "k8s" / "image"))
import build  # noqa: E402  (deploy/k8s/image/build.py)

HERE = ROOT / "deploy" / "k8s" / "istio"
FRAGMENT = ROOT / "envoy" / "fragment.yaml"
ENVOYFILTER = HERE / "envoyfilter.yaml"
WASMPLUGIN = HERE / "wasmplugin.yaml"
DIGEST = ROOT / "deploy" / "k8s" / "image" / "digest.txt"
WASM = ROOT / "target" / "wasm32-wasip1" / "wasm-release" / "alpn_upgrade_filter.wasm"
IMAGE_DIR = ROOT / "target" / "oci" / "alpn-upgrade-filter"
IMAGE_TAG = "0.1.0"
BEGIN = "# BEGIN generated from envoy/fragment.yaml"
END = "# END generated from envoy/fragment.yaml"
# The upgrade type Istio puts on every connection manager it generates
# (pilot/pkg/networking/core/listener_builder.go, buildHTTPConnectionManager).
ISTIO_UPGRADE_TYPES = ["websocket"]


def hcm_patch(fragment_text):
    """The part of the fragment's connection manager piece Istio lacks."""
    hcm = yaml.safe_load(fragment_text)["http_connection_manager"]
    types = [u["upgrade_type"] for u in hcm["upgrade_configs"]]
    missing = [t for t in ISTIO_UPGRADE_TYPES if t not in types]
    if missing:
        sys.exit(f"fragment.yaml: upgrade_configs lacks {missing}; Istio's are assumed to be needed")
    return {
        "skip_xff_append": hcm["skip_xff_append"],
        "upgrade_configs": [u for u in hcm["upgrade_configs"] if u["upgrade_type"] not in ISTIO_UPGRADE_TYPES],
        "local_reply_config": hcm["local_reply_config"],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, as the fragment writes them."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def render_envoyfilter(text, patch):
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if l.strip() == BEGIN]
    ends = [i for i, l in enumerate(lines) if l.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        sys.exit(f"{ENVOYFILTER.name}: needs one '{BEGIN}' line and one '{END}' after it")
    indent = lines[starts[0]][: len(lines[starts[0]]) - len(lines[starts[0]].lstrip())]
    body = yaml.dump(patch, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    generated = [indent + l for l in body.splitlines()]
    return "\n".join(lines[: starts[0] + 1] + generated + lines[ends[0]:]) + "\n"


def rustc_version():
    return subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def render_digest(module, digest):
    return (
        "# The filter's OCI image (compat variant) as deploy/k8s/image/build.py writes it from\n"
        "# target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm (make k8s-image).\n"
        "# Refreshed by `make k8s-istio-refresh`; `make test` fails when it is stale.\n"
        f"manifest {digest}\n"
        f"module sha256:{hashlib.sha256(module).hexdigest()} {len(module)} bytes\n"
        f"built with {rustc_version()}\n"
    )


def render_wasmplugin(text, digest):
    pattern = re.compile(r"^(  sha256: )[0-9a-f]{64}(.*)$", re.M)
    if len(pattern.findall(text)) != 1:
        sys.exit(f"{WASMPLUGIN.name}: expected one 'sha256: <64 hex digits>' line")
    return pattern.sub(lambda m: m[1] + digest.removeprefix("sha256:") + m[2], text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is stale")
    p.add_argument("--wasm", type=pathlib.Path, default=WASM, help="the built filter")
    a = p.parse_args()
    if not a.wasm.exists():
        sys.exit(f"{a.wasm} is missing: run `make build` first")
    module = a.wasm.read_bytes()
    digest = build.write_layout(module, IMAGE_DIR, IMAGE_TAG)

    wanted = {
        ENVOYFILTER: render_envoyfilter(ENVOYFILTER.read_text(), hcm_patch(FRAGMENT.read_text())),
        WASMPLUGIN: render_wasmplugin(WASMPLUGIN.read_text(), digest),
        DIGEST: render_digest(module, digest),
    }
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if a.check:
        if stale:
            names = ", ".join(str(s.relative_to(ROOT)) for s in stale)
            hint = ""
            if DIGEST in stale and DIGEST.exists():
                hint = (f"\ncommitted:\n{DIGEST.read_text()}now:\n{wanted[DIGEST]}"
                        "(a changed filter, or a different rustc, gives a different module)")
            sys.exit(f"stale: {names} (run: make k8s-istio-refresh, and commit){hint}")
        print(f"checked: image {digest} ({IMAGE_DIR.relative_to(ROOT)}), wasmplugin.yaml, "
              "envoyfilter.yaml, digest.txt")
        return
    for path in stale:
        path.write_text(wanted[path])
    print(f"rendered: image {digest}; rewrote: "
          + (", ".join(str(s.relative_to(ROOT)) for s in stale) or "nothing (all current)"))


if __name__ == "__main__":
    main()
