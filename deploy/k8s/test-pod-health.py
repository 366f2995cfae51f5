#!/usr/bin/env python3
"""The chart's Pod, run for real: Envoy (1.40, the built filter) from the
rendered envoy.yaml in front of alpn-router from the rendered router.toml, and
the load balancer's health path seen from outside, as the ALB sees it:

  1. 200 once the router is ready (Envoy's active health check of /readyz);
     the upgrade path answers through the filter and the router;
  2. 503 after POST /healthcheck/fail on Envoy's admin (the first step of the
     preStop drain), 200 again after POST /healthcheck/ok;
  3. 503 while the router's /readyz answers 503 (its connection cap full),
     200 again when it is ready;
  4. 503 once the router drains after SIGTERM (/readyz 503, then gone).

Ports: the router binds port 0 (its listen addresses rewritten in the rendered
router.toml) and the chart is rendered again with the ports it got, for Envoy;
Envoy's listener and admin bind port 0 and are read back.

  test-pod-health.py --helm HELM --envoy ENVOY --router ALPN_ROUTER --wasm FILTER.wasm
"""

import argparse
import http.client
import json
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

HERE = pathlib.Path(__file__).resolve().parent
CHART = HERE / "helm/alpn-tunnel"
DEADLINE = 60  # seconds, for every wait: generous on a loaded 2-core machine


class Process:
    """A child process whose output is collected line by line."""

    def __init__(self, name, cmd):
        self.name, self.lines, self.cond = name, [], threading.Condition()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern):
        rx = re.compile(pattern)
        end = time.monotonic() + DEADLINE
        with self.cond:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = end - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    fail(f"{self.name} never logged /{pattern}/; its log:\n" + "\n".join(self.lines[-40:]))
                self.cond.wait(min(left, 0.5))

    def log(self):
        with self.cond:
            return "\n".join(self.lines)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.p.kill()


PROCESSES = []
DIAGNOSE = None  # a function adding what Envoy knows of the router to a failure


def fail(message):
    for p in PROCESSES:
        p.stop()
    sys.exit(f"pod health test failed: {message}")


def render(args, sets, template="configmap"):
    cmd = [args.helm, "template", "rel", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"),
           "--show-only", f"templates/{template}.yaml"]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(f"helm template: {r.stderr}")
    doc = yaml.safe_load(r.stdout)
    return doc["data"] if template == "configmap" else doc


def request(addr, method, path, headers=None):
    """(status, headers, body) of one request on a new connection."""
    c = http.client.HTTPConnection(*addr, timeout=DEADLINE)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
    finally:
        c.close()


def wait_status(addr, path, want, why):
    """Polls GET path until it answers `want` (a readiness check, not a timing
    assertion: the deadline is only there so that a broken set-up ends)."""
    end, seen = time.monotonic() + DEADLINE, None
    while time.monotonic() < end:
        try:
            seen = request(addr, "GET", path)[0]
        except OSError as e:
            seen = f"no answer ({e})"
        if seen == want:
            print(f"  {path} -> {want}: {why}")
            return
        time.sleep(0.2)
    fail(f"{path} answered {seen}, never {want}, {why}" + (DIAGNOSE() if DIAGNOSE else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--helm", "--envoy", "--router", "--wasm"):
        ap.add_argument(flag, required=True)
    args = ap.parse_args()
    args.wasm = str(pathlib.Path(args.wasm).resolve())
    with tempfile.TemporaryDirectory(prefix="pod-health-") as tmp:
        tmp = pathlib.Path(tmp)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", tmp / "tls.key", "-out", tmp / "tls.crt", "-subj", "/CN=router.test",
                        "-days", "1"], check=True, capture_output=True)
        # Two connections fill the router's cap, so that its /readyz says 503 on
        # demand; a connection that sends no head is held for header_timeout.
        common = [f"router.tls.mountPath={tmp}", "router.limits.max_connections=2",
                  "router.limits.header_timeout=5m", "envoy.routerHealthCheck.intervalSeconds=1",
                  "envoy.routerHealthCheck.timeoutSeconds=1", f"envoy.wasmPath={args.wasm}"]

        router_toml = render(args, common)["router.toml"]
        router_toml, n = re.subn(r'^(\s*listen = ")[^"]*:\d+"', r'\g<1>127.0.0.1:0"', router_toml, flags=re.M)
        if n != 2:
            fail(f"expected the upgrade and metrics listen lines in router.toml, found {n}")
        (tmp / "router.toml").write_text(router_toml)
        router = Process("alpn-router", [args.router, "serve", "--config", str(tmp / "router.toml")])
        PROCESSES.append(router)
        upgrade_port = int(router.wait_for(r"upgrade listener on [\d.]+:(\d+)")[1])
        metrics_port = int(router.wait_for(r"metrics listener on [\d.]+:(\d+)")[1])

        ports = [f"router.upgradePort={upgrade_port}", f"router.metricsPort={metrics_port}"]
        data = render(args, common + ports)
        deployment = render(args, common + ports, "deployment")
        (envoy_container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy"]
        envoy_prestop = envoy_container["lifecycle"]["preStop"]["exec"]["command"]
        envoy_cfg = yaml.safe_load(data["envoy.yaml"])
        envoy_cfg["admin"]["address"]["socket_address"]["port_value"] = 0
        envoy_cfg["static_resources"]["listeners"][0]["address"]["socket_address"].update(
            address="127.0.0.1", port_value=0)
        health_path = next(f for f in envoy_cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                           ["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.health_check"
                           )["typed_config"]["headers"][0]["string_match"]["exact"]
        (tmp / "envoy.yaml").write_text(yaml.safe_dump(envoy_cfg))
        envoy = Process("envoy", [args.envoy, "-c", str(tmp / "envoy.yaml"), "--use-dynamic-base-id",
                                  "--concurrency", "1", "--admin-address-path", str(tmp / "admin"),
                                  "--log-level", "info"])
        PROCESSES.append(envoy)
        end = time.monotonic() + DEADLINE
        while not (tmp / "admin").exists() or not (tmp / "admin").read_text().strip():
            if time.monotonic() > end or envoy.p.poll() is not None:
                fail("Envoy wrote no admin address; its log:\n" + envoy.log()[-3000:])
            time.sleep(0.1)
        host, port = (tmp / "admin").read_text().strip().rsplit(":", 1)
        admin = (host, int(port))
        wait_status(admin, "/ready", 200, "Envoy is live")
        global DIAGNOSE
        DIAGNOSE = lambda: "\nEnvoy's clusters:\n" + "\n".join(
            l for l in request(admin, "GET", "/clusters")[2].splitlines() if l.startswith("alpn_router::")) + \
            "\nEnvoy's log:\n" + envoy.log()[-2000:] + "\nthe router's log:\n" + router.log()[-2000:]
        listeners = json.loads(request(admin, "GET", "/listeners?format=json")[2])
        sock = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        lb = (sock["address"], sock["port_value"])
        print(f"Envoy on {lb[0]}:{lb[1]} (admin {admin[1]}), router upgrade {upgrade_port}, metrics {metrics_port}; "
              f"health path {health_path}")

        # 1. Ready, and the upgrade path works through this bootstrap: a GET
        #    without an upgrade is refused by the filter (426), a type Envoy does
        #    not list by the fragment's local reply (426 naming the allowed
        #    types), and an alpn upgrade reaches the router (101).
        wait_status(lb, health_path, 200, "the router is ready")
        status, _, body = request(lb, "GET", "/connectionupgrade")
        if status != 426 or "only accepts connection upgrades" not in body:
            fail(f"GET /connectionupgrade answered {status} {body!r}, not the filter's 426")
        status, headers, _ = request(lb, "GET", "/connectionupgrade", {"Connection": "Upgrade", "Upgrade": "ssh"})
        if status != 426 or headers.get("upgrade") != "alpn, alpn-ping, websocket":
            fail(f"an ssh upgrade answered {status} {headers}, not 426 naming the allowed types")
        print(f"  /connectionupgrade: no upgrade -> 426 (the filter), Upgrade: ssh -> 426, Upgrade: {headers['upgrade']}")
        status, _, _ = request(lb, "GET", "/elsewhere")
        if status != 404:
            fail(f"GET /elsewhere answered {status}, not 404 (the Pod's Envoy routes nothing else)")
        with socket.create_connection(lb, timeout=DEADLINE) as c:
            c.sendall(b"GET /connectionupgrade HTTP/1.1\r\nHost: tunnel.test\r\n"
                      b"Connection: Upgrade\r\nUpgrade: alpn\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    break
                head += chunk
            first = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if first != "HTTP/1.1 101 Switching Protocols" or b"upgrade: alpn\r\n" not in head.lower():
                fail(f"an alpn upgrade through Envoy answered {head!r}")
        print(f"  an alpn upgrade through Envoy -> {first} from the router")

        # 2. The drain's first step fails the health path; ok restores it.
        if request(admin, "POST", "/healthcheck/fail")[0] != 200:
            fail("POST /healthcheck/fail refused")
        status, headers, _ = request(lb, "GET", health_path)
        if status != 503 or headers.get("x-envoy-immediate-health-check-fail") != "true":
            fail(f"after /healthcheck/fail the health path answered {status} {headers}")
        print(f"  {health_path} -> 503 (x-envoy-immediate-health-check-fail) after POST /healthcheck/fail")
        request(admin, "POST", "/healthcheck/ok")
        wait_status(lb, health_path, 200, "after POST /healthcheck/ok")

        # 3. The router not ready (its cap full): the health path follows.
        held = [socket.create_connection(("127.0.0.1", upgrade_port), timeout=DEADLINE) for _ in range(2)]
        wait_status(("127.0.0.1", metrics_port), "/readyz", 503, "the router's cap is full")
        wait_status(lb, health_path, 503, "Envoy's health check saw the router's /readyz 503")
        for c in held:
            c.close()
        wait_status(("127.0.0.1", metrics_port), "/readyz", 200, "the held connection closed")
        wait_status(lb, health_path, 200, "the router is ready again")

        # 4. SIGTERM with a connection open: the router drains (/readyz 503
        #    while it waits for the connection), and the health path follows.
        #    (Two fill the cap, which shows both accepted; one is closed again.)
        held = [socket.create_connection(("127.0.0.1", upgrade_port), timeout=DEADLINE) for _ in range(2)]
        wait_status(("127.0.0.1", metrics_port), "/readyz", 503, "the router holds both")
        held.pop().close()
        wait_status(("127.0.0.1", metrics_port), "/readyz", 200, "the router holds one")
        held = held[0]
        # The Envoy container's preStop hook, as rendered: it must wait while the
        # router runs (Envoy carries the tunnels) and end once the router is gone.
        hook = subprocess.Popen(envoy_prestop)
        router.p.terminate()
        router.wait_for(r"shutting down: .*draining 1 connections")
        wait_status(("127.0.0.1", metrics_port), "/readyz", 503, "the router is draining")
        wait_status(lb, health_path, 503, "Envoy's health check saw the draining router")
        if hook.poll() is not None:
            fail(f"Envoy's preStop hook {envoy_prestop} ended while the router was still draining")
        held.close()
        if router.p.wait(timeout=DEADLINE) != 0:
            fail("the router did not exit cleanly after its drain; its log:\n" + router.log()[-3000:])
        try:
            status = hook.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            hook.kill()
            fail("Envoy's preStop hook went on after the router had exited")
        if status != 0:
            fail(f"Envoy's preStop hook exited with {status}")
        print("  Envoy's preStop hook waited while the router drained and ended when it exited")
        for p in PROCESSES:
            p.stop()
    print("pod health: the load balancer's health path follows Envoy's health check and the router's readiness")


if __name__ == "__main__":
    main()
