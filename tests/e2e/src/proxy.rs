//! A TCP proxy between an agent and the hub that a test can cut (every open
//! connection is dropped and new ones are refused) and restore. It forwards
//! bytes only: TLS stays end to end between agent and hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cuttable TCP proxy on 127.0.0.1.
pub struct CutProxy {
    /// Where agents connect.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Listen on a free port and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                if *cut_rx.borrow() {
                    drop(inbound); // refused while cut
                    continue;
                }
                count.fetch_add(1, Ordering::Relaxed);
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                    // Dropping both sockets closes them: each side sees the connection end.
                });
            }
        });
        Ok(CutProxy { addr, cut, accepted, task })
    }

    /// Drop every connection now and refuse new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forward again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}
