//! The gRPC port's TLS: a rustls server with OPTIONAL client certificates
//! verified against the hub CA, and an accept loop that hands tonic connections
//! carrying the verified peer identity (parsed once per connection).
//!
//! Handshakes are bounded: each must finish within [`HANDSHAKE_TIMEOUT`], at
//! most [`MAX_HANDSHAKES`] run at once (more connections wait in the listen
//! backlog), and one source address may hold at most
//! [`MAX_HANDSHAKES_PER_IP`] unfinished handshakes (more are closed at once),
//! so a slowloris from a few addresses cannot starve agents of handshake
//! slots.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{Instrument, debug, info_span};

use crate::pki::{PeerCert, peer_cert};
use crate::{Error, Result};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// TLS handshakes in progress at once on the gRPC port.
pub const MAX_HANDSHAKES: usize = 4096;
/// Unfinished TLS handshakes one source IP may hold.
pub const MAX_HANDSHAKES_PER_IP: usize = 256;

/// Per-source-IP count of handshakes in progress.
#[derive(Default)]
struct InFlight(parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl InFlight {
    /// Take a slot for `ip`; `false` when it already holds the maximum.
    fn enter(&self, ip: std::net::IpAddr) -> bool {
        let mut m = self.0.lock();
        let n = m.entry(ip).or_default();
        if *n >= MAX_HANDSHAKES_PER_IP {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: std::net::IpAddr) {
        let mut m = self.0.lock();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// What the hub knows about a connection; tonic puts it in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's identity, if the client sent one.
    pub peer: Option<Arc<PeerCert>>,
}

/// A TLS connection with its [`ConnInfo`].
pub struct TlsIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The rustls server config: `chain`/`key` as the server identity, client
/// certificates optional and, when sent, verified against `client_roots`.
/// ALPN `h2` (gRPC clients such as grpcio insist on it).
pub fn server_config(
    client_roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in client_roots {
        roots.add(c.clone()).map_err(|e| Error::Tls(format!("client CA: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accept TCP connections on `listener`, run TLS handshakes concurrently (a
/// slow client never holds up others), and yield finished connections. Stops
/// accepting on `shutdown`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsIo>> {
    let (tx, rx) = mpsc::channel(1024);
    let acceptor = TlsAcceptor::from(config);
    let per_ip = Arc::new(InFlight::default());
    tokio::spawn(
        crate::accept::capped(listener, MAX_HANDSHAKES, shutdown, move |tcp, remote, permit| {
            let _ = tcp.set_nodelay(true);
            if !per_ip.enter(remote.ip()) {
                debug!(%remote, "too many unfinished TLS handshakes from this address; connection closed");
                return;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let per_ip = per_ip.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                per_ip.leave(remote.ip());
                drop(permit);
                match handshake {
                    Ok(Ok(tls)) => {
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| peer_cert(c))
                            .map(Arc::new);
                        let io = TlsIo { inner: tls, info: ConnInfo { remote: Some(remote), peer } };
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%remote, "TLS handshake timed out"),
                }
            });
        })
        .instrument(info_span!("grpc_accept")),
    );
    ReceiverStream::new(rx)
}
