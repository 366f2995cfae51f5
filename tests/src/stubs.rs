//! Stub upstreams on `127.0.0.1:0`: a router that answers any upgrade with 101
//! and echoes the stream, and a web application that answers with the exact
//! request it received. Both record the request heads they saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// The request heads a stub received, in arrival order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A stub listening on a loopback port until the test process ends.
pub struct Stub {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The request heads it has received.
    pub seen: Seen,
}

impl Stub {
    /// The heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(handler: fn(TcpStream, Seen)) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let record = record.clone();
            let _ = conn.set_nodelay(true);
            thread::spawn(move || handler(conn, record));
        }
    });
    Stub { addr, seen }
}

/// Reads up to the end of the head; returns the head and what followed it.
fn read_head(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A router stand-in: answers 101 with the upgrade type it was asked for, then
/// echoes every byte until the client closes its side.
pub fn router() -> Stub {
    serve(|mut conn, seen| {
        let Some((head, rest)) = read_head(&mut conn) else {
            return;
        };
        let upgrade = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("upgrade"))
            })
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        seen.lock().unwrap().push(head);
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
        );
        if conn.write_all(answer.as_bytes()).is_err() || conn.write_all(&rest).is_err() {
            return;
        }
        echo_until_eof(&mut conn);
    })
}

/// Echoes every byte until EOF (or an error), then closes the write side.
pub fn echo_until_eof(conn: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// A TCP echo server: every byte back, until EOF.
pub fn echo() -> Stub {
    serve(|mut conn, _| echo_until_eof(&mut conn))
}

/// A web application stand-in: answers 200 with the request (head and
/// `Content-Length` body) as its body.
pub fn web() -> Stub {
    serve(|mut conn, seen| {
        while let Some((head, mut rest)) = read_head(&mut conn) {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                })
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while rest.len() < len {
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => return,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
            let mut body = head.clone().into_bytes();
            body.extend_from_slice(&rest[..len]);
            seen.lock().unwrap().push(head);
            // One write: a head and a body written apart meet Nagle's algorithm
            // and delayed ACKs, and each answer would stall for 40 ms.
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(&body);
            if conn.write_all(&answer).is_err() {
                return;
            }
        }
    })
}

/// A TCP server that records the first bytes each connection sends (as lossy
/// text) and closes it: it shows what arrives when TLS is passed through.
pub fn recorder() -> Stub {
    serve(|mut conn, seen| {
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = conn.read(&mut buf).unwrap_or(0);
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
    })
}

/// A hop in front of `upstream` that passes each request head on but drops
/// whatever its client sent behind it before the upstream's answer came back
/// (as a proxy that reads one request and nothing more until the upgrade is
/// answered would), then pipes both ways. Bytes a client sends early are
/// lost; a client that waits for the answer is served.
pub fn forgetful_hop(upstream: SocketAddr) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let record = record.clone();
            thread::spawn(move || {
                let Some((head, _early)) = read_head(&mut conn) else {
                    return;
                };
                record.lock().unwrap().push(head.clone());
                let Ok(mut up) = TcpStream::connect(upstream) else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let _ = conn.set_nodelay(true);
                if up.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let Some((answer, rest)) = read_head(&mut up) else {
                    return;
                };
                // What else came from the client meanwhile goes too.
                let _ = conn.set_nonblocking(true);
                let mut scratch = [0u8; 4096];
                while matches!(conn.read(&mut scratch), Ok(n) if n > 0) {}
                let _ = conn.set_nonblocking(false);
                if conn.write_all(answer.as_bytes()).is_err() || conn.write_all(&rest).is_err() {
                    return;
                }
                let (Ok(mut from_client), Ok(mut to_up)) = (conn.try_clone(), up.try_clone())
                else {
                    return;
                };
                let forth = thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_up);
                    let _ = to_up.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut up, &mut conn);
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = forth.join();
            });
        }
    });
    Stub { addr, seen }
}
