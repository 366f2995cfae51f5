//! `make demo`: the whole product on this machine, as a user would run it.
//! A client reaches PostgreSQL, Redis and an echo service through nginx playing
//! an AWS ALB (TLS terminated, http/1.1 only), Envoy with the upgrade filter and
//! the router, using the real `alpn-tunnel`, `psql` and `redis-cli`; then it
//! shows what each hop recorded. `KEEP=1 make demo` leaves everything running.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::databases::{Postgres, Redis};
use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::load_balancer::{Kind, LoadBalancer};
use integration_tests::process::Logged;
use integration_tests::tls::{ca, leaf};
use integration_tests::{built, http, payload, root, stubs};

fn heading(text: &str) {
    println!("\n\x1b[1m{text}\x1b[0m");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// Certificates for the demo: the router's (from its own CA) and a client's
/// (from the CA the postgresql route trusts).
fn certificates(dir: &Path) {
    let router_ca = ca("demo router CA");
    let server = leaf(&["router.demo"], "router.demo", &router_ca);
    let clients_ca = ca("demo clients CA");
    let client = leaf(&[], "demo-user", &clients_ca);
    for (name, text) in [
        ("router-ca.pem", router_ca.pem()),
        ("server.pem", server.pem),
        ("server.key", server.key_pem),
        ("clients-ca.pem", clients_ca.pem()),
        ("client.pem", client.pem),
        ("client.key", client.key_pem),
    ] {
        fs::write(dir.join(name), text).unwrap();
    }
}

fn main() {
    let keep = std::env::var_os("KEEP").is_some_and(|v| v != "0");
    let dir = root().join("target/demo");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let router_bin = built("target/debug/alpn-router", "make build");
    let tunnel_bin = built("target/debug/alpn-tunnel", "make build");

    println!("\x1b[1mALPN tunnels through an HTTP load balancer: a live demo\x1b[0m");
    println!(
        "Everything runs on this machine, on loopback ports; files are in {}.",
        dir.display()
    );
    heading("Starting");
    certificates(&dir);
    let echo = stubs::echo();
    let web = stubs::web();
    let pg = Postgres::available().then(Postgres::start);
    let redis = Redis::available().then(Redis::start);
    let mut routes = format!("[[route]]\nalpn = \"echo\"\nbackend = \"{}\"\n", echo.addr);
    if let Some(pg) = &pg {
        routes += &format!("\n[[route]]\nalpn = \"postgresql\"\nbackend = \"{}\"\nclient_ca = \"clients-ca.pem\"\n", pg.addr);
    }
    if let Some(r) = &redis {
        routes += &format!("\n[[route]]\nalpn = \"redis\"\nbackend = \"{}\"\n", r.addr);
    }
    let config = format!(
        "[upgrade]\nlisten = \"127.0.0.1:0\"\ntrusted_peers = [\"127.0.0.1/32\"]\n\n[direct]\nlisten = \"127.0.0.1:0\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\n{routes}"
    );
    fs::write(dir.join("router.toml"), &config).unwrap();
    let mut router = Logged::spawn(
        Command::new(&router_bin)
            .args(["serve", "--config"])
            .arg(dir.join("router.toml"))
            .env("RUST_LOG", "info"),
    );
    let upgrade = router.address_after("upgrade listener on ");
    let direct = router.address_after("direct listener on ");
    let metrics = router.address_after("metrics listener on ");
    let envoy = Envoy::start(
        &Bootstrap::shipped("behind-l7.yaml")
            .port(8080, 0)
            .port(9001, upgrade.port())
            .port(8081, web.addr.port()),
    );
    let envoy_addr = envoy.listener("web");
    let lb = LoadBalancer::start(Kind::Nginx, envoy_addr, Duration::from_secs(60));
    let server = format!("https://{}", lb.addr);

    let show = |name: &str, addr: Option<SocketAddr>| {
        addr.map_or_else(
            || format!("{name}: not installed"),
            |a| format!("{name} {a}"),
        )
    };
    println!(
        "   backends       echo {}, web app {}, {}, {}",
        echo.addr,
        web.addr,
        show("PostgreSQL", pg.as_ref().map(|p| p.addr)),
        show("Redis", redis.as_ref().map(|r| r.addr))
    );
    println!("   router         alpn-router: upgrades on {upgrade}, direct TLS on {direct}, metrics on {metrics}");
    println!("   Envoy          with the upgrade filter on {envoy_addr} (envoy/behind-l7.yaml)");
    println!("   load balancer  nginx on {} (deploy/load-balancers/nginx.conf): TLS, http/1.1 only, like an ALB", lb.addr);
    println!();
    println!("   you --TLS--> nginx --HTTP--> Envoy + filter --upgrade--> router --TLS, routed by ALPN--> backend");

    let common = |c: &mut Command| {
        c.args(["--server", &server, "--sni", "router.demo", "--ca"])
            .arg(dir.join("router-ca.pem"))
            .arg("--outer-ca")
            .arg(&lb.cert.pem)
            .env_remove("ALPN_TUNNEL_UPGRADE")
            // The demo's detection cache stays with its files, not the user's.
            .env("XDG_CACHE_HOME", dir.join("cache"));
    };

    heading("1. What the client finds: alpn-tunnel probe (the first thing to run when something does not connect)");
    let mut probe = Command::new(&tunnel_bin);
    probe.args(["probe", "--alpn", "echo"]);
    common(&mut probe);
    let out = probe.output().expect("run alpn-tunnel probe");
    indent(&String::from_utf8_lossy(&out.stdout));

    heading("2. A local port per service: alpn-tunnel forward");
    let mut forward = Command::new(&tunnel_bin);
    forward.args(["forward", "--alpn", "echo=127.0.0.1:0"]);
    if pg.is_some() {
        forward.args(["--alpn", "postgresql=127.0.0.1:0"]);
    }
    if redis.is_some() {
        forward.args(["--alpn", "redis=127.0.0.1:0"]);
    }
    forward
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"));
    common(&mut forward);
    let mut forwarder = Logged::spawn(&mut forward);
    let mut local =
        |alpn: &str| forwarder.address_on_line(&format!(" for {alpn} at "), "listening on ");
    let echo_port = local("echo");
    let pg_port = pg.as_ref().map(|_| local("postgresql"));
    let redis_port = redis.as_ref().map(|_| local("redis"));
    println!("   echo        -> 127.0.0.1:{}", echo_port.port());
    if let Some(p) = pg_port {
        println!("   postgresql  -> 127.0.0.1:{}   (the route requires a client certificate: --cert/--key)", p.port());
    }
    if let Some(p) = redis_port {
        println!("   redis       -> 127.0.0.1:{}", p.port());
    }

    heading("3. Real clients, through the load balancer");
    if let Some(p) = pg_port {
        let psql = Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
                p.port()
            ))
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT 'PostgreSQL answers: ' || split_part(version(), ' on ', 1)",
            ])
            .args([
                "-c",
                "SELECT 'sum of 1..1000 = ' || sum(n) FROM generate_series(1, 1000) AS n",
            ])
            .output();
        match psql {
            Ok(o) => indent(&format!(
                "$ psql ...\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => println!("   psql: {e}"),
        }
    }
    if let Some(p) = redis_port {
        let port = p.port().to_string();
        let cli = |args: &[&str]| {
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|e| e.to_string())
        };
        println!(
            "   $ redis-cli SET greeting hello   -> {}",
            cli(&["SET", "greeting", "hello"])
        );
        println!(
            "   $ redis-cli GET greeting         -> {}",
            cli(&["GET", "greeting"])
        );
    }
    let data = payload(32 << 20, 2026);
    let started = Instant::now();
    let mut s = TcpStream::connect(echo_port).unwrap();
    let mut writer = s.try_clone().unwrap();
    let to_send = data.clone();
    let send = std::thread::spawn(move || writer.write_all(&to_send));
    let mut back = vec![0u8; data.len()];
    let read = s.read_exact(&mut back);
    let _ = send.join();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "   echo: 32 MiB there and back in {:.2} s ({:.0} MiB/s each way), {}",
        secs,
        32.0 / secs,
        if read.is_ok() && back == data {
            "intact"
        } else {
            "NOT intact"
        }
    );
    drop(s);
    let page = http::get(web.addr, "/");
    println!(
        "   meanwhile the web application keeps being served: GET / -> {}",
        page.status
    );

    std::thread::sleep(Duration::from_millis(500));
    heading("4. What each hop recorded");
    println!("   the router, one line per tunnel (framing, SNI, ALPN, route, bytes each way, why it ended):");
    for line in router.log().lines().filter(|l| l.contains(" ended: ")) {
        // From the connection's span on: the time and level say nothing here.
        println!("     {}", line.find("conn{").map_or(line, |i| &line[i..]));
    }
    println!("   Envoy's filter (admin /stats):");
    let stats = http::get(envoy.admin, "/stats?filter=alpn_upgrade").text();
    for line in stats.lines().filter(|l| !l.ends_with(": 0")) {
        println!("     {line}");
    }
    println!("   the router's Prometheus metrics (http://{metrics}/metrics):");
    let mut m = TcpStream::connect(metrics).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = m.read_to_string(&mut text);
    for line in text.lines().filter(|l| {
        l.starts_with("alpn_router_connections_total") || l.starts_with("alpn_router_bytes_total")
    }) {
        println!("     {line}");
    }

    if keep {
        heading("Still running (KEEP is set). Try it by hand, then press Ctrl-C:");
        println!("   {} forward --server {server} --sni router.demo --ca {d}/router-ca.pem --outer-ca {} \\", tunnel_bin.display(), lb.cert.pem.display(), d = dir.display());
        println!("       --cert {d}/client.pem --key {d}/client.key --alpn echo=127.0.0.1:7000 --alpn postgresql=127.0.0.1:7432 --alpn redis=127.0.0.1:7379", d = dir.display());
        println!("   psql \"host=127.0.0.1 port=7432 user=postgres sslmode=disable\"    redis-cli -p 7379 PING");
        println!("   {} probe --server {server} --sni router.demo --ca {}/router-ca.pem --outer-ca {} --alpn redis", tunnel_bin.display(), dir.display(), lb.cert.pem.display());
        println!(
            "   curl -sk https://{}/   (the web application through the same load balancer)",
            lb.addr
        );
        loop {
            std::thread::park();
        }
    }
    println!(
        "\nDone: everything is stopped again. `KEEP=1 make demo` leaves it running to try by hand."
    );
}
