//! L4 authorization at the destination, for new and live connections.
//!
//! Each inbound connection is evaluated against the policies in scope of the destination
//! workload (`mesh::rbac`). Allowed connections are registered while they live; whenever the
//! config store changes, every live connection is evaluated again and those no longer allowed
//! are closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh::model::Workload;
use mesh::rbac::{evaluate, Connection, Decision};
use mesh::store::Store;
use tokio::sync::watch;

/// Evaluates `conn` against the policies in scope of `dst`, logging dry-run outcomes.
pub fn check(store: &Store, dst: &Workload, conn: &Connection) -> Decision {
    let policies = store.policies_for(dst);
    let decision = evaluate(&policies, conn);
    if let Some(dry) = &decision.dry_run {
        tracing::info!(
            target: "authz",
            connection = %conn,
            enforced = %decision.reason,
            allowed = decision.allowed,
            dry_run_allowed = dry.allowed,
            dry_run_reason = %dry.reason,
            "dry-run policy evaluated (not enforced)"
        );
    }
    decision
}

struct Live {
    conn: Connection,
    dst_uid: String,
    close: watch::Sender<Option<String>>,
}

/// The connections currently allowed and open, for re-evaluation.
#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// Held by a proxied connection; unregisters it on drop. `closed()` resolves with the reason
/// when policy no longer allows it.
pub struct LiveGuard {
    id: u64,
    registry: Arc<LiveConnections>,
    rx: watch::Receiver<Option<String>>,
}

impl LiveGuard {
    /// Resolves when the connection must be closed, with the decision that closed it.
    pub async fn closed(&mut self) -> String {
        loop {
            if let Some(reason) = self.rx.borrow_and_update().clone() {
                return reason;
            }
            if self.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an allowed connection to workload `dst_uid`.
    pub fn register(self: &Arc<Self>, conn: Connection, dst_uid: &str) -> LiveGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (close, rx) = watch::channel(None);
        self.lock().insert(
            id,
            Live {
                conn,
                dst_uid: dst_uid.to_string(),
                close,
            },
        );
        LiveGuard {
            id,
            registry: self.clone(),
            rx,
        }
    }

    /// Live connections now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Evaluates every live connection again; closes the ones now denied. Returns how many.
    pub fn recheck(&self, store: &Store) -> usize {
        let live = self.lock();
        let mut closed = 0;
        for l in live.values() {
            if l.close.borrow().is_some() {
                continue;
            }
            let Some(dst) = store.workload(&l.dst_uid) else {
                continue;
            };
            let decision = check(store, &dst, &l.conn);
            if !decision.allowed {
                tracing::info!(target: "authz", connection = %l.conn, reason = %decision.reason, "closing a live connection no longer allowed");
                let _ = l.close.send(Some(decision.reason.to_string()));
                closed += 1;
            }
        }
        closed
    }

    /// Re-checks on every store change, until the store is gone.
    pub async fn watch(self: Arc<Self>, store: Store) {
        let mut changes = store.subscribe();
        while changes.changed().await.is_ok() {
            self.recheck(&store);
        }
    }
}
