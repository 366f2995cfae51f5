#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*) from inputs the unit
and integration tests use. Run from anywhere; it rewrites only seed-* files, so
crashes kept as regression inputs (crash-*) and fuzzer finds stay."""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def write(target, seeds):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    for i, s in enumerate(seeds):
        if isinstance(s, str):
            s = s.encode()
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as fh:
            fh.write(s)


def stream(data, flags=0, sizes=b""):
    """The stream targets' input: control byte, chunk sizes, bytes."""
    return bytes([(flags << 4) | len(sizes)]) + sizes + data


def req(extra, path="/connectionupgrade", version="1.1", method="GET", host=True):
    head = f"{method} {path} HTTP/{version}\r\n"
    if host:
        head += "Host: r\r\n"
    return (head + extra + "\r\n").encode()


UP = "Connection: upgrade\r\n"
WS = f"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
REQUESTS = [
    req(UP + "Upgrade: alpn\r\n") + b"\x16\x03\x01early",
    req(UP + "Upgrade: alpn-ping\r\nX-Alpn-Client-Addr: 192.0.2.7\r\n"),
    req(UP + "Upgrade: alpn\r\nX-Alpn-Upgrade: alpn\r\nX-Forwarded-For: 198.51.100.1, 10.0.0.2\r\n"),
    req(WS + "Sec-WebSocket-Protocol: alpn-ping, alpn\r\n"),
    req(WS + "Sec-WebSocket-Protocol: alpn\r\n") + b"\x82\x85abcd\x01\x02\x03\x04\x05",
    req(WS + "Sec-WebSocket-Protocol: chat\r\n"),
    req("", method="POST"),
    req(""),
    req(UP + "Upgrade: alpn\r\n", path="/elsewhere"),
    req(UP + "Upgrade: alpn\r\nTransfer-Encoding: chunked\r\n"),
    req(UP + "Upgrade: alpn\r\nContent-Length: 5\r\n"),
    req(UP + "Upgrade: alpn\r\n", version="1.0"),
    req(UP + "Upgrade: alpn\r\n", host=False),
    req(UP + "Upgrade: alpn, alpn-ping\r\n"),
    req(UP + "Upgrade: alpn\r\nUpgrade: alpn\r\n"),
    req(UP + "Upgrade: h2c\r\n", path="/connectionupgrade?x=1"),
    b"GET /connectionupgrade HTTP/1.1\r\n" + b"X-Filler: aaaa\r\n" * 70 + b"\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
]

write("router_request",
      [stream(r) for r in REQUESTS] + [stream(REQUESTS[3], sizes=bytes([0, 6, 30]))])
write("filter_request", REQUESTS)

SWITCH = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n{}\r\n"
ANSWERS = [
    (0, SWITCH.format("alpn", "").encode() + b"\x16\x03\x03leftover"),
    (1, SWITCH.format("alpn-ping", "").encode() + b"\x00\x00\x00\x00"),
    (2, SWITCH.format("websocket", f"Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: alpn\r\n").encode()),
    (3, SWITCH.format("websocket", f"Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: alpn-ping\r\n").encode()),
    (2, SWITCH.format("websocket", "Sec-WebSocket-Accept: wrong\r\nSec-WebSocket-Protocol: alpn\r\n").encode()),
    (0, SWITCH.format("alpn-ping", "").encode()),
    (0, b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: alpn-ping, websocket\r\nContent-Length: 30\r\n\r\nupgrade type alpn not allowed\n"),
    (1, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nnot allowed"),
    (0, b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
    (0, b"SSH-2.0-OpenSSH_9.6\r\n"),
]
write("client_answer", [stream(a, flags=f) for f, a in ANSWERS]
      + [stream(ANSWERS[2][1], flags=2, sizes=bytes([3, 0, 17]))])


def ping_frame(payload):
    return struct.pack(">I", len(payload)) + payload


write("alpn_ping_read", [
    stream(ping_frame(b"hello") + ping_frame(b"") + ping_frame(b"world")),
    stream(ping_frame(b"") * 3, sizes=bytes([0])),
    stream(ping_frame(b"x" * 300) + ping_frame(b"y"), flags=1, sizes=bytes([2, 0, 9])),
    stream(ping_frame(b"truncated")[:-3]),
    stream(b"\x00\x00"),
])


def ws_frame(opcode, payload, fin=True, mask=None, rsv=0):
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        head += mask
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + payload


def ws_seeds(mask):
    """Frames as a peer in the other role sends them: masked towards a server."""
    f = lambda *a, **k: ws_frame(*a, mask=mask, **k)
    return [
        f(2, b"hello") + f(8, struct.pack(">H", 1000)),
        f(2, b"frag", fin=False) + f(9, b"ping") + f(0, b"ment", fin=False) + f(0, b"ed"),
        f(2, b"x" * 200) + f(2, b"y" * 70000)[:300],
        f(1, b"text"),
        f(8, struct.pack(">H", 1005)),
        f(8, b"\x03\xe8bye"),
        f(8, b"\x03\xe8\xff\xfe"),
        f(8, b"\x03"),
        f(9, b"p" * 126),
        f(9, b"p", fin=False),
        f(0, b"orphan"),
        f(2, b"a", fin=False) + f(2, b"b"),
        f(3, b"reserved"),
        f(2, b"rsv", rsv=0x40),
        f(10, b"unsolicited pong") + f(2, b"data"),
        f(2, b""),
    ]


MASK = b"\x37\xfa\x21\x3d"
WS_SEEDS = [stream(s, flags=0) for s in ws_seeds(MASK)] + \
    [stream(s, flags=1) for s in ws_seeds(None)] + \
    [stream(ws_seeds(None)[0], flags=0), stream(ws_seeds(MASK)[0], flags=1),
     stream(ws_seeds(MASK)[1], flags=0, sizes=bytes([0, 1, 2, 3]))]
write("websocket_read", WS_SEEDS)
write("websocket_differential", WS_SEEDS)

write("proxy_v2", [
    bytes([0]) + bytes([192, 0, 2, 1]) + bytes(12) + b"\x04\xd2" + bytes([10, 0, 0, 1]) + bytes(12) + b"\x01\xbb",
    bytes([1]) + bytes(range(1, 17)) + b"\xff\xff" + bytes(range(17, 33)) + b"\x00\x00",
    bytes([2]) + bytes([127, 0, 0, 1]) + bytes(12) + b"\x00\x50" + bytes(range(16)) + b"\x00\x01",
    bytes([5]) + bytes(36),
])

write("filter_config", [
    b"",
    b"{}",
    b'{"upgrade_paths": ["/a", "/b"], "type_tokens": {"alpn": "TCP", "alpn_ping": "tcp-ping", "websocket": "websocket"},'
    b' "allowed_types": ["tcp", "WebSocket"], "subprotocol_tokens": {"alpn": "raw", "alpn_ping": "pinged"},'
    b' "websocket_subprotocols": ["pinged"], "duplicate_upgrade_header": "X-Dup", "client_addr_header": "X-Client",'
    b' "trusted_hops": 1, "trusted_proxies": ["10.0.0.0/16", "192.0.2.1", "2001:db8::/32"],'
    b' "allowed_sources": ["10.0.0.0/8", "192.0.2.1"], "rate_limit": {"upgrades": 5, "per_seconds": 60, "slots": 16}}',
    b'{"upgrade_paths": ["x"]}',
    b'{"allowed_types": ["alpn", "ALPN"]}',
    b'{"type_tokens": {"alpn_ping": "websocket"}}',
    b'{"client_addr_header": "bad header"}',
    b'{"allowed_sources": ["10.0.0.0/33"]}',
    b'{"trusted_hops": -1}',
    b'{"trusted_hops": 2}',
    b'{"rate_limit": {"upgrades": 0, "per_seconds": 0, "slots": 0}}',
])

ROUTER_TOML = """[upgrade]
listen = "127.0.0.1:9001"
path = "/connectionupgrade"
trusted_peers = ["127.0.0.1/32"]
ping_interval = "30s"

[direct]
listen = "0.0.0.0:9443"

[metrics]
listen = "127.0.0.1:9090"
max_connections = 16
request_timeout = "5s"

[limits]
header_timeout = "10s"
handshake_timeout = "10s"
connect_timeout = "5s"
max_connections = 10000
drain_grace = "30s"
close_timeout = "30s"
half_closed_timeout = "5m"

[tls]
cert = "cert.pem"
key = "key.pem"

[[route]]
alpn = "postgresql"
backend = "127.0.0.1:5432"
client_ca = "ca.pem"
proxy_protocol = true

[[route]]
alpn = "redis"
backend = "127.0.0.1:6379"
idle_timeout = "1h"
"""
write("router_config", [
    ROUTER_TOML,
    '[direct]\nlisten = "127.0.0.1:0"\n[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[[route]]\nalpn = "x"\nbackend = "h:1"\n',
    '[upgrade]\nlisten = "127.0.0.1:0"\n[upgrade.names]\nupgrade_paths = ["/a"]\n[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
    '[[tls.sni]]\nname = "a.test"\ncert = "cert.pem"\nkey = "key.pem"\n[[route]]\nalpn = "x"\nsni = "a.test"\nbackend = "h:1"\n'
    '[route.backend_tls]\nca = "ca.pem"\nsni = "b.test"\n',
    '[tls]\ncert = "missing.pem"\nkey = "key.pem"\n',
    '[upgrade]\nlisten = "nope"\n',
])

# The client's configuration file: the shipped example (its files renamed to
# the fixture's cert.pem, key.pem, ca.pem) and the cases of the client's tests.
EXAMPLE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            "client", "alpn-tunnel.example.toml")).read()
EXAMPLE = (EXAMPLE.replace('"router-ca.pem"', '"ca.pem"')
           .replace('"client.pem"', '"cert.pem"').replace('"client.key"', '"key.pem"'))
SERVER = '[servers.db]\nurl = "https://db.example.com"\n'


def fwd(server, alpn, listen):
    return f'[[forward]]\nserver = "{server}"\nalpn = "{alpn}"\nlisten = "{listen}"\n'


write("client_config", [
    EXAMPLE,
    SERVER + fwd("db", "pg", "127.0.0.1:5432") + fwd("db", "redis", "127.0.0.1:0"),
    SERVER + "colour = 1\n",
    SERVER + 'ca = "missing.pem"\n',
    SERVER + 'cert = "cert.pem"\n',
    SERVER + 'key = "key.pem"\n',
    SERVER + 'upgrade = "sometimes"\n',
    SERVER + 'timeout = "0s"\n',
    '[servers.db]\nurl = "ftp://db"\n',
    'drain = "soon"\n',
    SERVER + fwd("web", "pg", "127.0.0.1:1"),
    SERVER + fwd("db", "pg", "127.0.0.1:1") + fwd("db", "x", "localhost:1"),
    SERVER + fwd("db", "pg", "127.0.0.1:1") + fwd("db", "pg", "127.0.0.1:2"),
    SERVER + fwd("db", "a", "127.0.0.1:0") + fwd("db", "b", "127.0.0.1:0")
    + fwd("db", "c", "127.0.0.1:7") + fwd("db", "d", "0.0.0.0:7"),
    '[[forward]]\nserver = "db"\nalpn = "pg"\nlisten = "127.0.0.1:1"\nport = 2\n',
    SERVER + 'proxy = "socks5://p:1080"\n',
    SERVER + 'proxy = "http://proxy.example.com:3128"\n' + fwd("db", "pg", "127.0.0.1:0"),
    SERVER + 'proxy = "none"\n' + fwd("db", "pg", "127.0.0.1:0"),
    SERVER + 'names = { type_tokens = { alpn = "tcp" }, duplicate_upgrade_header = "x-t" }\n'
    + fwd("db", "pg", "127.0.0.1:0"),
    SERVER + 'names = { type_tokens = { websocket = "alpn" } }\n',
    SERVER + 'names = { upgrade_paths = ["/x"] }\n',
    SERVER + 'sni = "router.test"\nca = "ca.pem"\ncert = "cert.pem"\nkey = "key.pem"\n'
    'outer_ca = "ca.pem"\nbind = "::1"\nping_interval = "0s"\nupgrade = "alpn-ping"\n'
    '[[forward]]\nname = "p.g-1"\nserver = "db"\nalpn = "postgresql"\nlisten = "[::1]:5432"\n',
    "this is not TOML",
])

write("server_url", [
    "https://[::1]:8443/x",
    "http://127.0.0.1:8080",
    "https://lb.example.com/connectionupgrade",
    "https://user@host/",
    "https://host/?q#f",
    "ftp://host",
    "http://proxy.example:3128",
    "http://us%40er:pa%3Ass@proxy:8080",
    "socks5://proxy:1080",
])

write("client_addr", [
    "10.0.0.2\n1\n10.0.0.0/8\n198.51.100.1",
    "10.0.0.2\n2\n10.0.0.0/8,::1\n203.0.113.9, 10.0.0.7\n198.51.100.1",
    "[::ffff:10.0.0.2]:443\n3\n::ffff:10.0.0.0/104\n[2001:db8::1]:443, unknown, 10.1.1.1",
    "192.0.2.1\n5\n10.0.0.0/8\n1.2.3.4",
    "10.0.0.2\n0\n10.0.0.0/8\n1.2.3.4",
    "garbage\n1\n\n",
])
