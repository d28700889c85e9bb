//! Fault injection: added latency, a rate of 500 / 429 answers, dropped watch
//! streams and pausing the server; set at start-up, through the Rust handle,
//! or at run time with `GET/PUT /_sim/faults` (JSON `FaultConfig`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The fault settings (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultConfig {
    /// Added to every API request, in milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..=1) of API requests answered 500 InternalError.
    pub error_rate: f64,
    /// Fraction (0..=1) of API requests answered 429 TooManyRequests.
    pub throttle_rate: f64,
    /// While true, requests wait (they are answered once resumed).
    pub paused: bool,
    /// Only requests whose path contains this string are affected (empty = all).
    pub path_filter: String,
    /// Only these verbs (get, list, watch, create, update, patch, delete); empty = all.
    pub verbs: Vec<String>,
}

/// Run-time fault handle (cheap to share).
#[derive(Debug)]
pub struct Faults {
    cfg: RwLock<FaultConfig>,
    paused: watch::Sender<bool>,
    drop_epoch: AtomicU64,
    drops: watch::Sender<u64>,
    /// Matching requests still to be answered 500, whatever the rates.
    fail_next: AtomicU64,
}

impl Faults {
    pub fn new(cfg: FaultConfig) -> Faults {
        let (paused, _) = watch::channel(cfg.paused);
        let (drops, _) = watch::channel(0);
        Faults {
            cfg: RwLock::new(cfg),
            paused,
            drop_epoch: AtomicU64::new(0),
            drops,
            fail_next: AtomicU64::new(0),
        }
    }

    /// The current settings.
    pub fn get(&self) -> FaultConfig {
        self.cfg.read().clone()
    }

    /// Replace the settings.
    pub fn set(&self, cfg: FaultConfig) {
        self.paused.send_replace(cfg.paused);
        *self.cfg.write() = cfg;
    }

    pub fn set_latency(&self, d: Duration) {
        self.cfg.write().latency_ms = d.as_millis() as u64;
    }

    pub fn set_error_rate(&self, rate: f64) {
        self.cfg.write().error_rate = rate.clamp(0.0, 1.0);
    }

    pub fn set_throttle_rate(&self, rate: f64) {
        self.cfg.write().throttle_rate = rate.clamp(0.0, 1.0);
    }

    /// Answer the next `n` matching API requests 500 InternalError, whatever
    /// the rates: a fault a test can count on (the rates are random).
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Hold every API request until `resume`.
    pub fn pause(&self) {
        self.cfg.write().paused = true;
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.cfg.write().paused = false;
        self.paused.send_replace(false);
    }

    /// Turn every fault off.
    pub fn clear(&self) {
        self.fail_next.store(0, Ordering::SeqCst);
        self.set(FaultConfig::default());
    }

    /// End every open watch stream now (clients see the stream close).
    pub fn drop_watches(&self) {
        let e = self.drop_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.drops.send_replace(e);
    }

    /// Notified when watches must be dropped.
    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    pub(crate) fn watch_drop_epoch(&self) -> u64 {
        self.drop_epoch.load(Ordering::SeqCst)
    }

    pub(crate) async fn wait_unpaused(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// What to do with a request: Ok(()) to serve it, Err(code) to fail it.
    pub(crate) async fn before(&self, path: &str, verb: &str) -> Result<(), u16> {
        let cfg = self.get();
        if !cfg.path_filter.is_empty() && !path.contains(&cfg.path_filter) {
            return Ok(());
        }
        if !cfg.verbs.is_empty() && !cfg.verbs.iter().any(|v| v == verb) {
            return Ok(());
        }
        if cfg.paused {
            self.wait_unpaused().await;
        }
        if cfg.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
        }
        if self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(500);
        }
        if cfg.error_rate > 0.0 && rand::random::<f64>() < cfg.error_rate {
            return Err(500);
        }
        if cfg.throttle_rate > 0.0 && rand::random::<f64>() < cfg.throttle_rate {
            return Err(429);
        }
        Ok(())
    }
}
