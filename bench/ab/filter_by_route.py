#!/usr/bin/env python3
"""Envoy CPU per ordinary request, as an A/B/C in one run: no filter, the filter
behind the composite matcher (wave 1, envoy/behind-l7.yaml at e4e940f), the filter
disabled by default and enabled by route (now). Three Envoys (--concurrency 1) at
once in front of one nginx, taking turns under wrk -c16 for 5 s, ROUNDS rounds;
prints the median CPU microseconds per request. Needs `make build`, nginx, wrk.

    python3 bench/ab/filter_by_route.py [ROUNDS]
"""
import os, re, subprocess, sys, time, statistics, tempfile, signal
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
cur=open(ROOT+'/envoy/behind-l7.yaml').read()
old=subprocess.run(['git','-C',ROOT,'show','e4e940f:envoy/behind-l7.yaml'],capture_output=True,text=True,check=True).stdout
s=cur.index('# BEGIN fragment.yaml http_filters'); e=cur.index('# END fragment.yaml http_filters')
variants={'no filter':cur[:s]+cur[e:],'composite (wave 1)':old,'by route (now)':cur}
envoys={}
for i,(name,text) in enumerate(variants.items()):
    port=18180+i; admin=19180+i
    path=f'{tmp}/{i}.yaml'; open(path,'w').write(boot(text,port,admin))
    p=subprocess.Popen([ENVOY,'-c',path,'--concurrency','1','--base-id',str(300+i),'-l','warning'],stdout=open(f'{tmp}/{i}.log','w'),stderr=subprocess.STDOUT)
    procs.append(p); envoys[name]=(p,port)
time.sleep(6)
def cpu(pid):
    f=open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK')
res={n:[] for n in envoys}
rounds=int(sys.argv[1]) if len(sys.argv)>1 else 5
try:
    for r in range(rounds):
        for n,(p,port) in envoys.items():
            c0=cpu(p.pid)
            out=subprocess.run(['wrk','-t1','-c16','-d5s',f'http://127.0.0.1:{port}/index.html'],capture_output=True,text=True).stdout
            c1=cpu(p.pid)
            m=re.search(r'(\d+) requests in',out); reqs=int(m.group(1))
            res[n].append((c1-c0)*1e6/reqs)
        print('round',r+1,{n:round(v[-1],1) for n,v in res.items()},flush=True)
finally:
    for p in procs: p.send_signal(signal.SIGTERM)
base=statistics.median(res['no filter'])
for n,v in res.items():
    m=statistics.median(v)
    print(f'{n:22s} median {m:7.1f} us/request  ({m/base:.3f}x no filter)  runs {[round(x,1) for x in v]}')
