//! The backend every subject is measured in front of, run as a process of its
//! own (`alpn-bench backend`), so that its descriptors and memory are not the
//! bench client's: 10,000 idle tunnels need 10,000 descriptors on each side.
//!
//! It serves four ports:
//! - echo: every byte back, until EOF;
//! - source: reads an 8-byte big-endian count, writes that many bytes, then
//!   drains until EOF (a download through a tunnel);
//! - sink: reads an 8-byte big-endian count and that many bytes, answers one
//!   byte once they are all in, then drains until EOF (an upload through a tunnel);
//! - http: HTTP/1.1 with keep-alive; `GET /bytes/N` answers N bytes, any other
//!   path a short `ok` (the same download as plain HTTPS, and wrk's target).

use std::io;
use std::net::SocketAddr;
use std::process::Command;

use integration_tests::process::Logged;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bytes every download is made of.
static CHUNK: [u8; 64 * 1024] = [0x5a; 64 * 1024];

/// Serves the four ports until the process is killed; prints `echo on ADDR`,
/// `source on ADDR`, `sink on ADDR` and `http on ADDR` to stderr.
pub async fn serve() -> io::Result<()> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let source = TcpListener::bind("127.0.0.1:0").await?;
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("echo on {}", echo.local_addr()?);
    eprintln!("source on {}", source.local_addr()?);
    eprintln!("sink on {}", sink.local_addr()?);
    eprintln!("http on {}", http.local_addr()?);
    tokio::try_join!(
        accept(echo, echo_conn),
        accept(source, source_conn),
        accept(sink, sink_conn),
        accept(http, http_conn)
    )?;
    Ok(())
}

async fn accept<F, Fut>(listener: TcpListener, handler: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let (conn, _) = listener.accept().await?;
        let _ = conn.set_nodelay(true);
        // A failed connection (a client gone mid-way) ends only itself.
        tokio::spawn(handler(conn));
    }
}

async fn echo_conn(mut conn: TcpStream) -> io::Result<()> {
    let (mut rd, mut wr) = conn.split();
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

async fn source_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut count = [0u8; 8];
    conn.read_exact(&mut count).await?;
    send(&mut conn, u64::from_be_bytes(count)).await?;
    let mut scratch = [0u8; 1024];
    while conn.read(&mut scratch).await? > 0 {}
    Ok(())
}

async fn sink_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut count = [0u8; 8];
    conn.read_exact(&mut count).await?;
    crate::measure::read_exactly(&mut conn, u64::from_be_bytes(count)).await?;
    // The one byte that tells the client the last of its bytes has arrived.
    conn.write_all(&[1]).await?;
    let mut scratch = [0u8; 1024];
    while conn.read(&mut scratch).await? > 0 {}
    Ok(())
}

async fn send(conn: &mut TcpStream, mut left: u64) -> io::Result<()> {
    while left > 0 {
        let n = left.min(CHUNK.len() as u64) as usize;
        conn.write_all(&CHUNK[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

async fn http_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // One request head at a time (clients here send no bodies).
        let (head_len, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf).map_err(io::Error::other)? {
                httparse::Status::Complete(n) => {
                    let length = req
                        .path
                        .and_then(|p| p.strip_prefix("/bytes/"))
                        .and_then(|n| n.parse::<u64>().ok());
                    break (n, length);
                }
                httparse::Status::Partial => {
                    if conn.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
            }
        };
        buf.drain(..head_len);
        match length {
            Some(n) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
                );
                conn.write_all(head.as_bytes()).await?;
                send(&mut conn, n).await?;
            }
            // One write: head and body apart would meet Nagle and delayed ACKs.
            None => {
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n",
                )
                .await?
            }
        }
    }
}

/// A running backend process and its ports.
pub struct Backend {
    /// The echo port.
    pub echo: SocketAddr,
    /// The download port.
    pub source: SocketAddr,
    /// The upload port.
    pub sink: SocketAddr,
    /// The HTTP port.
    pub http: SocketAddr,
    _process: Logged,
}

impl Backend {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self._process.pid()
    }

    /// Starts `bench_bin backend`.
    pub fn start(bench_bin: &std::path::Path) -> Backend {
        let mut process = Logged::spawn(Command::new(bench_bin).arg("backend"));
        Backend {
            echo: process.address_after("echo on "),
            source: process.address_after("source on "),
            sink: process.address_after("sink on "),
            http: process.address_after("http on "),
            _process: process,
        }
    }
}
