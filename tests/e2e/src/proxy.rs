//! A TCP proxy between an agent and the hub that a test can cut (every open
//! connection is dropped and new ones are refused), stall (a silent
//! partition: sockets stay open but no byte passes, no RST, like dropped
//! packets), throttle (hub to agent, bytes per second) and restore. It
//! forwards bytes only: TLS stays end to end between agent and hub.

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
    /// Hub-to-agent bytes per second (0: unlimited).
    throttle: Arc<AtomicU64>,
    /// Hub-to-agent bytes forwarded so far.
    down: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Copy `from` to `to`, counting bytes into `count` and pacing to `rate`
/// bytes per second when it is not 0.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: Option<Arc<AtomicU64>>,
    count: Option<Arc<AtomicU64>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(r) = &rate {
            let r = r.load(Ordering::Relaxed);
            if r > 0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(n as f64 / r as f64)).await;
            }
        }
    }
    let _ = to.shutdown().await;
}

impl CutProxy {
    /// Listen on a free port and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let (throttle, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (rate, bytes) = (throttle.clone(), down.clone());
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
                let (rate, bytes) = (rate.clone(), bytes.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    let up = pump(in_r, out_w, None, None);
                    let down = pump(out_r, in_w, Some(rate), Some(bytes));
                    let stalled = tokio::select! {
                        _ = async { tokio::join!(up, down) } => false,
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
        Ok(CutProxy { addr, mode, accepted, throttle, down, task })
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

    /// Pace hub-to-agent bytes to `bytes_per_sec` on every connection (0:
    /// unlimited again).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.throttle.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Hub-to-agent bytes forwarded so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
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
