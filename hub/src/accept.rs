//! The one capped accept loop shared by the HTTP ports and the gRPC (TLS)
//! port: at most `max` connections are handled at once (more wait in the
//! kernel's listen backlog), accept errors such as EMFILE back off instead of
//! spinning, and accepting stops on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Accept on `listener` until `shutdown`. Each connection is handed to
/// `handle` with a permit of the `max` slots: the connection counts against
/// the cap until the handler drops the permit. Returns when `shutdown` fires.
pub async fn capped(
    listener: TcpListener,
    max: usize,
    shutdown: CancellationToken,
    mut handle: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        handle(tcp, remote, permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cap holds: with `max` = 2 and three clients waiting, the third
    /// connection is handed over only after a handler released its permit
    /// (each hand-over records whether the release had happened); shutdown
    /// ends the loop.
    #[tokio::test]
    async fn at_most_max_connections_are_handled_at_once() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let released = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let seen = released.clone();
        let task = tokio::spawn(capped(listener, 2, shutdown.clone(), move |tcp, _, permit| {
            tx.send((tcp, permit, seen.load(Ordering::SeqCst))).unwrap();
        }));
        let _clients: Vec<_> = futures::future::join_all((0..3).map(|_| TcpStream::connect(addr))).await;
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert!(!first.2 && !second.2);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        released.store(true, Ordering::SeqCst);
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(third.2, "a third connection was handed over while two held the slots");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
