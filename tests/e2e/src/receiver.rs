//! A local HTTP receiver for the hub's alert notifications (the `webhook`
//! provider's JSON document), recording every delivery.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use convoy_hub::alerts::payload::Notification;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The request headers.
    pub headers: HeaderMap,
    /// The raw body.
    pub body: Bytes,
    /// The body parsed as a notification, if it is one.
    pub notification: Option<Notification>,
}

/// An HTTP server on 127.0.0.1 that answers 200 to every POST and keeps it.
pub struct AlertReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    task: JoinHandle<()>,
}

async fn receive(
    State(got): State<Arc<Mutex<Vec<Delivery>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let notification = serde_json::from_slice::<Notification>(&body).ok();
    got.lock().push(Delivery { headers, body, notification });
    StatusCode::OK
}

impl AlertReceiver {
    /// Start listening.
    pub async fn start() -> Result<AlertReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/{*path}", post(receive)).with_state(got.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(AlertReceiver { addr, got, task })
    }

    /// The URL to configure as a Provider address.
    pub fn url(&self) -> String {
        format!("http://{}/alerts", self.addr)
    }

    /// Every delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().clone()
    }

    /// Every notification so far.
    pub fn notifications(&self) -> Vec<Notification> {
        self.got.lock().iter().filter_map(|d| d.notification.clone()).collect()
    }
}

impl Drop for AlertReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
