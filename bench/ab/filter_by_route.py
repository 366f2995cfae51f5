#!/usr/bin/env python3
"""Envoy CPU per ordinary request, as an A/B/... in one run, every variant built
from envoy/behind-l7.yaml (the composite one from e4e940f):

  no filter, no routes   the fragment's http_filters entry and its three extra
                         routes removed: the clean baseline the ratios refer to
  no filter              the http_filters entry removed; the three extra routes
                         stay, with their typed_per_filter_config (Envoy accepts
                         a FilterConfig for a filter not in the chain)
  routes only            as 'no filter', typed_per_filter_config also removed
  filter, no routes      the Wasm filter (disabled: true) loaded, the three
                         routes removed: the VM is there, nothing enables it
  by route (now)         envoy/behind-l7.yaml as shipped
  composite (wave 1)     the filter behind the composite matcher (e4e940f)

One Envoy (--concurrency 1) per variant, all at once in front of one nginx; each
is checked alive and answering 200 before measuring, then warmed up (wrk 2 s). They
take turns under wrk -c16 for 5 s, ROUNDS rounds, the first Envoy of a round rotating each round.
CPU is the sum of the Envoy threads' schedstat run time (ns, not 10 ms ticks).
Prints each round's figures, then the median CPU microseconds per request and
the median of the per-round ratios to the baseline. Needs `make build`, nginx, wrk.

    python3 bench/ab/filter_by_route.py [ROUNDS] [VARIANT ...]
    AB_SECONDS=1 python3 bench/ab/filter_by_route.py 80 'no filter' 'routes only' ...

VARIANTs name a subset (the baseline always runs). AB_SECONDS (default 5) sets each
turn's length: short turns and many rounds pair the variants closer in time, which
helps when other work on the machine comes and goes.
"""
import os, re, subprocess, sys, time, statistics, tempfile, signal, urllib.request
ROOT=os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
WASM=ROOT+'/target/wasm32-wasip1/wasm-release/alpn_upgrade_filter.wasm'
ENVOY=ROOT+'/.venv/bin/envoy'
tmp=tempfile.mkdtemp()
nginx_conf=f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:18081; location / {{ return 200 'ok'; }} }} }}"""
open(tmp+'/nginx.conf','w').write(nginx_conf)
procs=[subprocess.Popen(['nginx','-c',tmp+'/nginx.conf','-e',tmp+'/nginx.err'])]
def boot(text, port, admin):
    text=text.replace('/etc/envoy/alpn_upgrade_filter.wasm',WASM)
    text=text.replace('port_value: 8080',f'port_value: {port}').replace('port_value: 9901',f'port_value: {admin}').replace('port_value: 8081','port_value: 18081')
    return text
def cut(text, piece):
    """text without the fragment region `piece` (the BEGIN line goes, END stays)."""
    s=text.index(f'# BEGIN fragment.yaml {piece}'); e=text.index(f'# END fragment.yaml {piece}')
    return text[:s]+text[e:]
def no_per_filter_config(text):
    """text without any typed_per_filter_config block (the key and its deeper lines)."""
    return re.sub(r'\n( *)typed_per_filter_config:\n(?:\1 +.*\n)*', '\n', text)
cur=open(ROOT+'/envoy/behind-l7.yaml').read()
old=subprocess.run(['git','-C',ROOT,'show','e4e940f:envoy/behind-l7.yaml'],capture_output=True,text=True,check=True).stdout
BASE='no filter, no routes'
variants={
    BASE: cut(cut(cur,'http_filters'),'routes'),
    'no filter': cut(cur,'http_filters'),
    'routes only': no_per_filter_config(cut(cur,'http_filters')),
    'filter, no routes': cut(cur,'routes'),
    'by route (now)': cur,
    'composite (wave 1)': old,
}
# sanity: what each variant holds
for n,t in variants.items():
    print(f'# {n:22s} wasm filter: {"envoy.extensions.filters.http.wasm" in t}, '
          f'extra routes: {t.count("alpn_tunnel_")}, typed_per_filter_config: {t.count("typed_per_filter_config")}', flush=True)
if len(sys.argv)>2: variants={n:variants[n] for n in [BASE]+[a for a in sys.argv[2:] if a!=BASE]}
envoys={}
for i,(name,text) in enumerate(variants.items()):
    port=18180+i; admin=19180+i
    path=f'{tmp}/{i}.yaml'; open(path,'w').write(boot(text,port,admin))
    p=subprocess.Popen([ENVOY,'-c',path,'--concurrency','1','--base-id',str(300+i),'-l','warning'],stdout=open(f'{tmp}/{i}.log','w'),stderr=subprocess.STDOUT)
    procs.append(p); envoys[name]=(p,port,admin)
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r: return r.status, r.read().decode()
    except urllib.error.HTTPError as e: return e.code, ''
    except OSError: return None, ''
def alive_and_200(name):
    p,port,admin=envoys[name]
    return p.poll() is None and get(f'http://127.0.0.1:{port}/index.html')[0]==200
try:
    deadline=time.time()+30
    while time.time()<deadline and not all(alive_and_200(n) for n in envoys): time.sleep(0.5)
    for i,(n,(p,port,admin)) in enumerate(envoys.items()):
        if not alive_and_200(n):
            sys.exit(f'variant {n!r} did not boot or answer 200 (exit {p.poll()}):\n'+open(f'{tmp}/{i}.log').read()[-3000:])
        st=get(f'http://127.0.0.1:{admin}/stats?filter=wasm.*(created|active)')[1].split()
        print(f'# {n:22s} pid {p.pid} port {port}: 200; {" ".join(st) or "no wasm stats"}', flush=True)
    for n,(p,port,admin) in envoys.items():  # warm-up, not measured
        subprocess.run(['wrk','-t1','-c16','-d2s',f'http://127.0.0.1:{port}/index.html'],capture_output=True)
    def cpu(pid):
        # seconds on CPU of all the process's threads (schedstat: ns run time)
        t=0
        for tid in os.listdir(f'/proc/{pid}/task'):
            try: t+=int(open(f'/proc/{pid}/task/{tid}/schedstat').read().split()[0])
            except OSError: pass
        return t/1e9
    res={n:[] for n in envoys}; rps={n:[] for n in envoys}
    rounds=int(sys.argv[1]) if len(sys.argv)>1 else 5
    secs=int(os.environ.get('AB_SECONDS','5'))
    names=list(envoys)
    for r in range(rounds):
        for n in names[r%len(names):]+names[:r%len(names)]:
            p,port,admin=envoys[n]
            c0=cpu(p.pid)
            out=subprocess.run(['wrk','-t1','-c16',f'-d{secs}s',f'http://127.0.0.1:{port}/index.html'],capture_output=True,text=True).stdout
            c1=cpu(p.pid)
            m=re.search(r'(\d+) requests in',out); reqs=int(m.group(1))
            if 'Non-2xx' in out or p.poll() is not None: sys.exit(f'variant {n!r} failed under load:\n{out}')
            res[n].append((c1-c0)*1e6/reqs); rps[n].append(reqs/secs)
        print('round',r+1,{n:round(v[-1],2) for n,v in res.items()},'req/s',{n:round(v[-1]) for n,v in rps.items()},flush=True)
finally:
    for p in procs: p.send_signal(signal.SIGTERM)
base=statistics.median(res[BASE])
for n,v in res.items():
    m=statistics.median(v)
    ratio=statistics.median(x/b for x,b in zip(v,res[BASE]))
    print(f'{n:22s} median {m:7.2f} us/request  ({m/base:.3f}x {BASE}; per-round ratio median {ratio:.3f})  runs {[round(x,2) for x in v]}')
