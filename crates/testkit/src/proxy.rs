//! A TCP proxy in front of a shared service, so a test can simulate that
//! service's outage (and its return) without stopping it for other tests.
//!
//! One accept task owns every connection task (in a `JoinSet`), so aborting
//! it on drop ends them all. A `watch` channel carries the open/cut state
//! from the handle to every task.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Forwards `127.0.0.1:port` to a target address until cut.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    /// `true` while cut. The accept task and every connection task hold a
    /// receiver.
    cut: watch::Sender<bool>,
    /// The accept task; aborted on drop, which drops its `JoinSet` and so
    /// aborts every connection task.
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to
    /// `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind proxy listener")?;
        let port = listener.local_addr().context("proxy local_addr")?.port();
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, target, cut_rx));
        Ok(TcpProxy { port, cut, accept })
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Resets every open connection and, until [`TcpProxy::restore`], resets
    /// every new one as soon as it is accepted: clients see the service go
    /// away mid-stream and fail to reconnect.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Accepts and forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, cut: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                if *cut.borrow() {
                    reset(client);
                    continue;
                }
                conns.spawn(forward(client, target, cut.clone()));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let mut server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "proxy cannot reach target");
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {
            reset(client);
            reset(server);
        }
    }
}

/// Close with RST rather than FIN, like a crashed peer or a dropped link.
fn reset(stream: TcpStream) {
    // Zero linger never blocks; if it fails the close is a FIN, still a cut.
    let _ = stream.set_zero_linger();
    drop(stream);
}
