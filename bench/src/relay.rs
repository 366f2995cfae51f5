//! A TCP relay that holds every byte for a fixed time in each direction: the
//! distance between a client and its load balancer, which loopback lacks (and
//! `tc netem` is not available here). Each chunk read is written on after
//! `one_way`, in order. It does not delay the TCP handshake itself, so a
//! subject that opens a new connection (the HTTPS request, a fresh tunnel) is
//! favoured by one round trip against a real network; pre-opened tunnels are
//! not.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running relay; dropping it stops accepting (open connections end with
/// their peers).
pub struct DelayRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DelayRelay {
    /// Relays connections on a new loopback port to `upstream`, `one_way`
    /// late each way.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> io::Result<DelayRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(late(cr, sw, one_way), late(sr, cw, one_way));
                });
            }
        });
        Ok(DelayRelay { addr, stop })
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; closes `to`'s
/// write side `delay` after `from`'s end.
async fn late(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let chunk = buf[..n].to_vec();
            if tx.send((Instant::now() + delay, chunk)).is_err() || n == 0 {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
