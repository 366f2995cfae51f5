//! `make demo`: the upgrade filter in a real Envoy, started from the shipped
//! `envoy/behind-l7.yaml`, with stand-ins for the router and the web application.
//! It sends what a load balancer would forward and prints what happened at each
//! hop. `KEEP=1 make demo` leaves everything running to try by hand.

use std::io::{Read, Write};
use std::time::Instant;

use integration_tests::envoy::{Bootstrap, Envoy};
use integration_tests::http::{self, exchange};
use integration_tests::stubs;

fn request(lines: &[&str]) -> Vec<u8> {
    format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes()
}

fn main() {
    let router = stubs::router();
    let web = stubs::web();
    let bootstrap = Bootstrap::shipped("behind-l7.yaml")
        .port(8080, 0)
        .port(9001, router.addr.port())
        .port(8081, web.addr.port());
    println!("Starting Envoy 1.40 with the filter (envoy/behind-l7.yaml) ...");
    let envoy = Envoy::start(&bootstrap);
    let listener = envoy.listener("web");
    println!();
    println!(
        "  load balancer (you)  ->  Envoy {listener}  --+-- /connectionupgrade -> router {}",
        router.addr
    );
    println!(
        "                                                 +-- everything else ----> web app {}",
        web.addr
    );
    println!("  (router and web app are stand-ins here: the router answers 101 and echoes)");
    println!();

    println!("1. An ordinary web request passes untouched:");
    let r = exchange(
        listener,
        &request(&[
            "GET /index.html HTTP/1.1",
            "Host: app.example",
            "X-Forwarded-For: 198.51.100.7",
        ]),
    );
    println!(
        "   GET /index.html  ->  {} from the web app ({} requests reached it)\n",
        r.status,
        web.heads().len()
    );

    println!("2. A well-formed upgrade, as the load balancer forwards it, is approved:");
    let mut conn = http::connect(listener);
    let started = Instant::now();
    conn.write_all(&request(&[
        "GET /connectionupgrade HTTP/1.1",
        "Host: tunnel.example",
        "Connection: Upgrade",
        "Upgrade: alpn",
        "X-Forwarded-For: 198.51.100.7",
        "X-Alpn-Client-Addr: 6.6.6.6",
    ]))
    .expect("send the upgrade");
    let answer = http::read_response(&mut conn);
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    conn.write_all(&payload).expect("send through the tunnel");
    let mut echoed = vec![0u8; payload.len()];
    conn.read_exact(&mut echoed).expect("read the echo");
    let client_addr = router
        .heads()
        .first()
        .and_then(|h| {
            h.lines()
                .find(|l| l.starts_with("x-alpn-client-addr"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!(
        "   GET /connectionupgrade, Upgrade: alpn  ->  {} Switching Protocols",
        answer.status
    );
    println!("   the router saw `{client_addr}` (the client's spoofed 6.6.6.6 was replaced)");
    println!(
        "   256 KiB sent through the tunnel and echoed back {} in {} ms\n",
        if echoed == payload {
            "intact"
        } else {
            "CORRUPTED"
        },
        started.elapsed().as_millis()
    );
    drop(conn);

    println!("3. Everything else on the upgrade path is refused with a reason:");
    let up = "GET /connectionupgrade HTTP/1.1";
    for (what, raw) in [
        (
            "POST",
            request(&[
                "POST /connectionupgrade HTTP/1.1",
                "Host: t",
                "Content-Length: 0",
            ]),
        ),
        ("no upgrade", request(&[up, "Host: t"])),
        (
            "Upgrade: ssh",
            request(&[up, "Host: t", "Connection: Upgrade", "Upgrade: ssh"]),
        ),
        (
            "Upgrade: alpn, websocket",
            request(&[
                up,
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: alpn, websocket",
            ]),
        ),
        (
            "WebSocket, no key",
            request(&[
                up,
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "alpn on /app",
            request(&[
                "GET /app HTTP/1.1",
                "Host: t",
                "Connection: Upgrade",
                "Upgrade: alpn",
            ]),
        ),
    ] {
        let r = exchange(listener, &raw);
        println!("   {what:<26} -> {} {}", r.status, r.text().trim_end());
    }

    println!(
        "\n4. Counters on Envoy's admin /stats (http://{}/stats?filter=alpn_upgrade):",
        envoy.admin
    );
    let stats = http::get(envoy.admin, "/stats?filter=alpn_upgrade").text();
    for line in stats.lines().filter(|l| !l.ends_with(": 0")) {
        println!("   {line}");
    }
    println!("\n   The filter's decisions, from Envoy's log:");
    for line in envoy
        .log()
        .lines()
        .filter(|l| l.contains("alpn_upgrade: approved") || l.contains("alpn_upgrade: refused"))
        .take(4)
    {
        let said = line.rsplit("alpn_upgrade: ").next().unwrap_or(line);
        println!("   {said}");
    }

    if std::env::var_os("KEEP").is_some_and(|v| v != "0") {
        println!("\nKEEP is set: everything stays up until Ctrl-C. Try:");
        println!("   curl -i http://{listener}/connectionupgrade");
        println!("   curl -i -H 'Connection: Upgrade' -H 'Upgrade: alpn' http://{listener}/connectionupgrade");
        println!(
            "   curl -s http://{}/stats | grep alpn_upgrade",
            envoy.admin
        );
        loop {
            std::thread::park();
        }
    }
    println!(
        "\nDone; Envoy and the stand-ins are stopped. `KEEP=1 make demo` leaves them running."
    );
}
