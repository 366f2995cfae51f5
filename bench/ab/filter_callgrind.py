#!/usr/bin/env python3
"""Instructions Envoy executes per ordinary request, per route/bootstrap variant,
counted with callgrind (deterministic, unlike CPU time on a shared machine).

What it measures
  Every variant is derived from envoy/behind-l7.yaml (the shipped bootstrap, with
  ports rewritten: listener 18480+i, admin 19480+i, upstream `web` -> an nginx on
  127.0.0.1:18491 that answers 200 'ok'; the .wasm path -> the build). Each Envoy
  (--concurrency 1) runs under `valgrind --tool=callgrind --instr-atstart=no`.
  After boot: instrumentation on, 200 warm-up GETs of /index.html on one
  keep-alive connection, then PAIRS rounds; in each round, for every variant in
  turn: zero the counters, N1 GETs, dump; zero, N2 GETs, dump. Per-request
  instructions = (Ir(N2) - Ir(N1)) / (N2 - N1), so fixed per-dump costs cancel.
  The variants are interleaved round by round. Instruction counts do not depend
  on machine load.

  Before measuring, every variant is booted natively (no valgrind) and checked:
    GET /other  Upgrade: alpn + Connection: upgrade   -> 404
    GET /other  X-Alpn-Upgrade: alpn                  -> 404
    GET /index.html                                   -> 200
  plus a table of further requests (other Upgrade values, /connectionupgrade)
  whose status and first body line are printed for comparison with 'shipped'.

Variants (see variants(); `--list` prints each one's diff against 'shipped'):
  (All but 'shipped' are built on envoy/behind-l7.yaml without its inline_headers piece,
  i.e. as it was when this A/B was run; 'inline' is what ships since.)
  clean               no alpn_upgrade filter, none of the fragment's routes (the baseline)
  shipped             envoy/behind-l7.yaml as it is (with the inline_headers piece)
  no_inline           shipped without the inline_headers piece (as before)
  path_only           shipped without the two `prefix: /` header routes (filter + path route)
  upgrade_route_only  shipped without the x-alpn-upgrade route
  xalpn_route_only    shipped without the `upgrade` regex route
  inline              shipped + bootstrap `inline_headers` registering x-alpn-upgrade
  contains            upgrade route: `{contains: alpn, ignore_case: true}` instead of the regex
  contains_inline     both of the above
  hcm_refusal         no upgrade route: alpn/alpn-ping disabled in the HCM's upgrade_configs and
                      enabled on the /connectionupgrade route; a local_reply mapper turns Envoy's
                      403 upgrade_failed elsewhere into 404 (different body, filter not involved)
  hcm_refusal_inline  hcm_refusal + inline_headers
  (clean, path_only, upgrade_route_only, xalpn_route_only are references: they are expected to
  FAIL the 404/404/200 check.)

Request mixes (--mix): 'plain' = what http.client sends (Host, Accept-Encoding:
  identity; the mix of bench results filter-routes-vs-vm.md); 'alb' = plain plus
  the eight headers a browser request carries behind an AWS ALB (User-Agent,
  Accept, Accept-Language, Cookie, X-Forwarded-For/-Proto/-Port, X-Amzn-Trace-Id).

Run
  python3 bench/ab/filter_callgrind.py                       # all variants, 4 pairs, plain
  python3 bench/ab/filter_callgrind.py --list                # variant names and YAML diffs
  python3 bench/ab/filter_callgrind.py --check-only          # only the native 404/404/200 checks
  python3 bench/ab/filter_callgrind.py --pairs 4 --mix alb clean shipped inline
  OUT=/some/dir python3 bench/ab/filter_callgrind.py ...     # where YAMLs, logs, dumps go
                                                             # (default: a new temp dir)
Needs: the built .wasm (target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm),
  Envoy from .venv (the real binary, not the Python wrapper), valgrind with
  callgrind_control, nginx. About 1 GB of RAM per Envoy under valgrind; booting
  the V8 VM under valgrind takes a minute or two.
"""
import argparse, difflib, glob, http.client, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
WASM = ROOT + '/target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm'
ENVOY = ROOT + '/.venv/lib/python3.11/site-packages/envoy/_bin/envoy'
UPSTREAM = 18491

# ---------------------------------------------------------------- variants
def cut(text, piece):
    """text without the fragment region `piece` (the BEGIN line goes, END stays)."""
    s = text.index(f'# BEGIN fragment.yaml {piece}'); e = text.index(f'# END fragment.yaml {piece}')
    return text[:s] + text[e:]

def drop_route(text, name):
    """text without the route `- name: NAME` (up to the next route item or END marker)."""
    m = re.search(rf'\n( *)- name: {name}\n(?:\1 .*\n)*', text)
    assert m, name
    return text[:m.start()] + '\n' + text[m.end():]

INLINE = ('inline_headers:\n'
          '- {inline_header_name: x-alpn-upgrade, inline_header_type: REQUEST_HEADER}\n\n')
def inline(text):
    """bootstrap registers x-alpn-upgrade as an inline (O(1)) request header."""
    return text.replace('\nstatic_resources:', '\n' + INLINE + 'static_resources:', 1)

REGEX = 'safe_regex: {regex: "(?i)(.*,)?[ \\\\t]*(alpn|alpn-ping)[ \\\\t]*(,.*)?"}'
def contains(text):
    """the upgrade route's regex replaced by a case-insensitive substring match."""
    assert REGEX in text, 'regex not found'
    return text.replace(REGEX, '{contains: alpn, ignore_case: true}')

HCM_UPGRADES = ('          - upgrade_type: alpn\n'
                '          - upgrade_type: alpn-ping\n')
HCM_UPGRADES_OFF = ('          - upgrade_type: alpn\n'
                    '            enabled: false\n'
                    '          - upgrade_type: alpn-ping\n'
                    '            enabled: false\n')
ROUTE_ON = ('                  timeout: 0s\n'
            '                  idle_timeout: 0s\n')
ROUTE_ON_NEW = ROUTE_ON + ('                  upgrade_configs:\n'
                           '                  - upgrade_type: alpn\n'
                           '                  - upgrade_type: alpn-ping\n')
MAPPER_ANCHOR = '          # END fragment.yaml http_connection_manager'
MAPPER_404 = '''\
            - filter:
                extension_filter:
                  name: envoy.access_loggers.extension_filters.cel
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter
                    expression: >-
                      response.code_details == 'upgrade_failed'
                      && request.url_path != '/connectionupgrade'
                      && request.headers['upgrade'].matches('^(?i)(alpn|alpn-ping)$')
              status_code: 404
              body:
                inline_string: "alpn upgrades are served only on /connectionupgrade\\n"
'''
def hcm_refusal(text):
    """No `upgrade` header route: alpn/alpn-ping are disabled in the HCM's
    upgrade_configs and enabled only on the /connectionupgrade route, so such an
    upgrade on any other path is refused by Envoy itself before any filter (403
    upgrade_failed), and a local_reply mapper (evaluated only for local replies)
    turns that into 404. The x-alpn-upgrade route stays."""
    text = drop_route(text, 'alpn_tunnel_upgrade_elsewhere')
    assert HCM_UPGRADES in text and ROUTE_ON in text and MAPPER_ANCHOR in text
    text = text.replace(HCM_UPGRADES, HCM_UPGRADES_OFF, 1).replace(ROUTE_ON, ROUTE_ON_NEW, 1)
    return text.replace(MAPPER_ANCHOR, MAPPER_404 + MAPPER_ANCHOR, 1)

def without_inline(text):
    """text without the bootstrap's inline_headers piece (shipped since this A/B)."""
    s = text.index('\ninline_headers:\n')
    end = '# END fragment.yaml inline_headers\n'
    e = text.index(end) + len(end)
    return text[:s + 1] + text[e:].lstrip('\n')

def variants():
    cur = open(ROOT + '/envoy/behind-l7.yaml').read()
    # The variants are built on the bootstrap as it was before the inline
    # header piece shipped; 'inline' is what ships now ('shipped').
    base = without_inline(cur)
    return {
        'clean': cut(cut(base, 'http_filters'), 'routes'),
        'shipped': cur,
        'no_inline': base,
        'path_only': drop_route(drop_route(base, 'alpn_tunnel_upgrade_elsewhere'), 'alpn_tunnel_duplicate_header_elsewhere'),
        'upgrade_route_only': drop_route(base, 'alpn_tunnel_duplicate_header_elsewhere'),
        'xalpn_route_only': drop_route(base, 'alpn_tunnel_upgrade_elsewhere'),
        'inline': inline(base),
        'contains': contains(base),
        'contains_inline': inline(contains(base)),
        'hcm_refusal': hcm_refusal(base),
        'hcm_refusal_inline': inline(hcm_refusal(base)),
    }

def localize(text, i):
    text = text.replace('/etc/envoy/alpn_upgrade_filter.wasm', WASM)
    return (text.replace('port_value: 8080', f'port_value: {18480+i}')
                .replace('port_value: 9901', f'port_value: {19480+i}')
                .replace('port_value: 8081', f'port_value: {UPSTREAM}'))

# ---------------------------------------------------------------- requests
MIXES = {
    'plain': {},
    'alb': {'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
            'Accept': 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
            'Accept-Language': 'en-US,en;q=0.5',
            'Cookie': 'session=3f9a1c2b7d4e5f60718293a4b5c6d7e8; theme=dark',
            'X-Forwarded-For': '203.0.113.7', 'X-Forwarded-Proto': 'https', 'X-Forwarded-Port': '443',
            'X-Amzn-Trace-Id': 'Root=1-67891233-abcdef012345678912345678'},
}

def raw(port, lines, timeout=5):
    """status and first body line of one HTTP/1.1 request sent as raw lines."""
    s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    s.sendall(('\r\n'.join(lines + ['Host: example.com', '', ''])).encode())
    data = b''
    try:
        while b'\r\n\r\n' not in data or len(data) < 4096:
            chunk = s.recv(65536)
            if not chunk: break
            data += chunk
            head, _, body = data.partition(b'\r\n\r\n')
            m = re.search(rb'content-length: *(\d+)', head, re.I)
            if m and len(body) >= int(m.group(1)): break
    except socket.timeout:
        pass
    s.close()
    head, _, body = data.partition(b'\r\n\r\n')
    status = head.split(b' ')[1].decode() if head.startswith(b'HTTP/') else '?'
    return status, body.decode(errors='replace').split('\n')[0][:60]

CHECKS = [  # (label, request lines, required status or None)
    ('/other Upgrade: alpn', ['GET /other HTTP/1.1', 'Upgrade: alpn', 'Connection: upgrade'], '404'),
    ('/other X-Alpn-Upgrade: alpn', ['GET /other HTTP/1.1', 'X-Alpn-Upgrade: alpn'], '404'),
    ('/index.html', ['GET /index.html HTTP/1.1'], '200'),
    ('/other Upgrade: alpn-ping', ['GET /other HTTP/1.1', 'Upgrade: alpn-ping', 'Connection: upgrade'], None),
    ('/other Upgrade: ALPN', ['GET /other HTTP/1.1', 'Upgrade: ALPN', 'Connection: upgrade'], None),
    ('/other Upgrade: Alpn-Ping', ['GET /other HTTP/1.1', 'Upgrade: Alpn-Ping', 'Connection: upgrade'], None),
    ('/other Upgrade: websocket', ['GET /other HTTP/1.1', 'Upgrade: websocket', 'Connection: upgrade'], None),
    ('/other Upgrade: websocket, alpn', ['GET /other HTTP/1.1', 'Upgrade: websocket, alpn', 'Connection: upgrade'], None),
    ('/other Upgrade: alpnx', ['GET /other HTTP/1.1', 'Upgrade: alpnx', 'Connection: upgrade'], None),
    ('/other Upgrade: xalpn', ['GET /other HTTP/1.1', 'Upgrade: xalpn', 'Connection: upgrade'], None),
    ('/other Upgrade: h2c', ['GET /other HTTP/1.1', 'Upgrade: h2c', 'Connection: upgrade'], None),
    ('/other Upgrade: alpn, no Connection', ['GET /other HTTP/1.1', 'Upgrade: alpn'], None),
    ('/other X-Alpn-Upgrade: websocket', ['GET /other HTTP/1.1', 'X-Alpn-Upgrade: websocket'], None),
    ('/connectionupgrade Upgrade: alpn', ['GET /connectionupgrade HTTP/1.1', 'Upgrade: alpn', 'Connection: upgrade'], None),
    ('/connectionupgrade Upgrade: websocket, alpn', ['GET /connectionupgrade HTTP/1.1', 'Upgrade: websocket, alpn', 'Connection: upgrade'], None),
    ('/connectionupgrade Upgrade: h2c', ['GET /connectionupgrade HTTP/1.1', 'Upgrade: h2c', 'Connection: upgrade'], None),
    ('/connectionupgrade (no upgrade)', ['GET /connectionupgrade HTTP/1.1'], None),
    # inline_headers coalesces a repeated inline header into one comma-joined value: these show
    # whether that changes what the filter sees on the upgrade path.
    ('/connectionupgrade X-Alpn-Upgrade: alpn, Connection: upgrade, no Upgrade',
     ['GET /connectionupgrade HTTP/1.1', 'X-Alpn-Upgrade: alpn', 'Connection: upgrade'], None),
    ('/connectionupgrade X-Alpn-Upgrade: alpn twice, no Upgrade',
     ['GET /connectionupgrade HTTP/1.1', 'X-Alpn-Upgrade: alpn', 'X-Alpn-Upgrade: alpn', 'Connection: upgrade'], None),
    ('/connectionupgrade X-Alpn-Upgrade: alpn + websocket, no Upgrade',
     ['GET /connectionupgrade HTTP/1.1', 'X-Alpn-Upgrade: alpn', 'X-Alpn-Upgrade: websocket', 'Connection: upgrade'], None),
    ('/connectionupgrade Upgrade: alpn + X-Alpn-Upgrade: alpn',
     ['GET /connectionupgrade HTTP/1.1', 'Upgrade: alpn', 'X-Alpn-Upgrade: alpn', 'Connection: upgrade'], None),
    ('/connectionupgrade Upgrade: alpn + X-Alpn-Upgrade: alpn twice',
     ['GET /connectionupgrade HTTP/1.1', 'Upgrade: alpn', 'X-Alpn-Upgrade: alpn', 'X-Alpn-Upgrade: alpn', 'Connection: upgrade'], None),
    ('/connectionupgrade Upgrade: alpn + X-Alpn-Upgrade: websocket',
     ['GET /connectionupgrade HTTP/1.1', 'Upgrade: alpn', 'X-Alpn-Upgrade: websocket', 'Connection: upgrade'], None),
]

def get(port, path='/index.html', headers=None, timeout=5):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        c.request('GET', path, headers=headers or {}); r = c.getresponse(); r.read(); return r.status
    except OSError:
        return None
    finally:
        c.close()

# ---------------------------------------------------------------- run
def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('names', nargs='*')
    ap.add_argument('--pairs', type=int, default=4)
    ap.add_argument('--n', default='300,1300', help='N1,N2 requests per dump pair')
    ap.add_argument('--mix', default='plain', choices=list(MIXES))
    ap.add_argument('--list', action='store_true')
    ap.add_argument('--check-only', action='store_true')
    a = ap.parse_args()
    allv = variants()
    names = a.names or list(allv)
    if 'clean' not in names: names = ['clean'] + names
    V = {n: allv[n] for n in names}
    if a.list:
        for n, t in V.items():
            print(f'=== {n}')
            print(''.join(difflib.unified_diff(allv['shipped'].splitlines(True), t.splitlines(True), 'shipped', n, n=1)))
        return
    out = os.environ.get('OUT') or tempfile.mkdtemp(prefix='filter_cg.')
    os.makedirs(out + '/cg', exist_ok=True)
    print('# output in', out, flush=True)
    idx = {n: list(allv).index(n) for n in V}
    for n, t in V.items():
        open(f'{out}/{n}.yaml', 'w').write(localize(t, idx[n]))
    open(out + '/nginx.conf', 'w').write(f"""daemon off; worker_processes 1; pid {out}/nginx.pid; error_log {out}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{UPSTREAM}; location / {{ return 200 'ok'; }} }} }}""")
    procs = [subprocess.Popen(['nginx', '-c', out + '/nginx.conf', '-e', out + '/nginx.err'])]
    def stop(ps):
        for p in ps:
            if p.poll() is None: p.send_signal(signal.SIGTERM)
        for p in ps:
            try: p.wait(20)
            except subprocess.TimeoutExpired: p.kill()
    try:
        # ---- native checks
        nat = {}
        for n in V:
            nat[n] = subprocess.Popen([ENVOY, '-c', f'{out}/{n}.yaml', '--concurrency', '1', '--base-id', str(700 + idx[n]),
                                       '-l', 'warning'], stdout=open(f'{out}/{n}.native.log', 'w'), stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < 60 and not all(get(18480 + idx[n]) == 200 or nat[n].poll() is not None for n in V):
            time.sleep(0.5)
        table, failed = {}, []
        for n in V:
            port = 18480 + idx[n]
            if nat[n].poll() is not None:
                failed.append(n); print(f'# {n}: did not boot:\n' + open(f'{out}/{n}.native.log').read()[-2000:]); continue
            table[n] = [raw(port, lines) for _, lines, _ in CHECKS]
            ok = all(req is None or res[0] == req for (_, _, req), res in zip(CHECKS, table[n]))
            if not ok: failed.append(n)
            print(f'# {n:20s} boots; 404/404/200 check: {"PASS" if ok else "FAIL"} '
                  f'({"/".join(r[0] for r in table[n][:3])})', flush=True)
        stop(list(nat.values()))
        print('\n| request | ' + ' | '.join(table) + ' |\n|---|' + '---|' * len(table))
        for k, (label, _, _) in enumerate(CHECKS):
            print(f'| {label} | ' + ' | '.join(f'{table[n][k][0]} {table[n][k][1]!r}' if table[n][k][1] else table[n][k][0]
                                                for n in table) + ' |')
        json.dump({'checks': [c[0] for c in CHECKS], 'table': table, 'failed': failed}, open(out + '/checks.json', 'w'), indent=1)
        if a.check_only: return
        V = {n: t for n, t in V.items() if n in table}
        # ---- callgrind
        cg = {}
        for n in V:
            cg[n] = subprocess.Popen(['nice', '-n', '19', 'valgrind', '--tool=callgrind', '--instr-atstart=no',
                                      f'--callgrind-out-file={out}/cg/{n}.out', ENVOY, '-c', f'{out}/{n}.yaml',
                                      '--concurrency', '1', '--base-id', str(720 + idx[n]), '-l', 'warning'],
                                     stdout=open(f'{out}/{n}.cg.log', 'w'), stderr=subprocess.STDOUT)
            procs.append(cg[n])
        t0 = time.time()
        while not all(get(18480 + idx[n], timeout=30) == 200 for n in V):
            dead = [n for n in V if cg[n].poll() is not None]
            if dead: sys.exit(f'under valgrind, {dead} died; see {out}/*.cg.log')
            if time.time() - t0 > 900: sys.exit('valgrind Envoys not up after 15 min')
            time.sleep(3)
        print(f'# all {len(V)} up under callgrind after {time.time()-t0:.0f} s', flush=True)
        def ctl(n, *args):
            return subprocess.run(['callgrind_control', *args, str(cg[n].pid)], capture_output=True, text=True).stdout
        hdrs = MIXES[a.mix]
        conns = {}
        for n in V:
            ctl(n, '-i', 'on')
            conns[n] = http.client.HTTPConnection('127.0.0.1', 18480 + idx[n], timeout=120)
            for _ in range(200):
                conns[n].request('GET', '/index.html', headers=hdrs); r = conns[n].getresponse(); r.read()
        def dump(n, tag):
            before = set(glob.glob(f'{out}/cg/{n}.out.*'))
            ctl(n, '-d', tag)
            for _ in range(200):
                new = set(glob.glob(f'{out}/cg/{n}.out.*')) - before
                if new:
                    f = max(new, key=os.path.getmtime)
                    m = re.search(r'^(?:summary|totals): (\d+)', open(f).read(), re.M)
                    if m: return int(m.group(1)), f
                time.sleep(0.1)
            raise RuntimeError(f'no dump for {n}')
        N1, N2 = map(int, a.n.split(','))
        res = {n: [] for n in V}
        for k in range(a.pairs):
            for n in V:
                irs = []
                for N in (N1, N2):
                    ctl(n, '-z')
                    for _ in range(N):
                        conns[n].request('GET', '/index.html', headers=hdrs); r = conns[n].getresponse(); r.read()
                        assert r.status == 200, (n, r.status)
                    ir, f = dump(n, f'{n}-{k}-{N}')
                    irs.append(ir)
                res[n].append((irs[1] - irs[0]) / (N2 - N1))
                print(f'pair {k+1} {n:20s} Ir({N1})={irs[0]} Ir({N2})={irs[1]} -> {res[n][-1]:.0f}/request', flush=True)
        json.dump({'mix': a.mix, 'n': [N1, N2], 'per_request': res}, open(out + '/result.json', 'w'), indent=1)
        base = statistics.mean(res['clean'])
        print(f'\nmix {a.mix}, {a.pairs} pairs of N={N1}/{N2}; Ir per ordinary request')
        print('| variant | pairs | mean | sd | min-max | vs clean |\n|---|---|---|---|---|---|')
        for n, v in res.items():
            m = statistics.mean(v); sd = statistics.stdev(v) if len(v) > 1 else 0
            print(f'| {n} | {", ".join(f"{x:.0f}" for x in v)} | {m:,.0f} | {sd:.0f} | {min(v):,.0f}-{max(v):,.0f} | '
                  f'{m/base:.4f} ({m-base:+,.0f}) |')
    finally:
        stop(procs)

if __name__ == '__main__':
    main()
