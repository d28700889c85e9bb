//! A TCP proxy between an agent and the hub that a test can cut (every open
//! connection is dropped and new ones are refused), stall (a silent
//! partition: sockets stay open but no byte passes, no RST, like dropped
//! packets) and restore. It forwards bytes only: TLS stays end to end
//! between agent and hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Drop every connection, refuse new ones.
    Cut,
    /// Forward nothing and close nothing (new connections are held too);
    /// on restore the stalled connections are closed (their bytes in flight
    /// are lost, as after a real partition).
    Stall,
}

/// A cuttable TCP proxy on 127.0.0.1.
pub struct CutProxy {
    /// Where agents connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Listen on a free port and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let current = *mode_rx.borrow();
                match current {
                    Mode::Cut => {
                        drop(inbound); // refused while cut
                        continue;
                    }
                    Mode::Stall => {
                        // Held silently, closed when the stall ends.
                        let mut rx = mode_rx.clone();
                        tokio::spawn(async move {
                            let _ = rx.wait_for(|m| *m != Mode::Stall).await;
                            drop(inbound);
                        });
                        continue;
                    }
                    Mode::Forward => {}
                }
                count.fetch_add(1, Ordering::Relaxed);
                let mut rx = mode_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let mut inbound = inbound;
                    let stalled = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        m = rx.wait_for(|m| *m != Mode::Forward) => m.is_ok_and(|m| *m == Mode::Stall),
                    };
                    if stalled {
                        // Nothing passes, nothing is closed, until the stall ends.
                        let _ = rx.wait_for(|m| *m != Mode::Stall).await;
                    }
                    // Dropping both sockets closes them: each side sees the connection end.
                });
            }
        });
        Ok(CutProxy { addr, mode, accepted, task })
    }

    /// Drop every connection now and refuse new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// A silent partition until [`CutProxy::restore`]: open connections stay
    /// open but carry nothing, new ones are accepted and held.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Forward again (stalled connections are closed).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}
