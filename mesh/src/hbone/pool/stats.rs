//! Counters of HBONE client pools, shareable across pools so a node can sum all of its pods'.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Gauges and a counter of one or more [`super::Pool`]s. Cloning shares the counters: give the
/// same `PoolStats` to every pool (with [`super::Pool::with_stats`]) to read node-wide totals.
#[derive(Debug, Clone, Default)]
pub struct PoolStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicUsize,
    keys: AtomicUsize,
    streams: AtomicUsize,
    opened: AtomicU64,
}

impl PoolStats {
    /// A fresh set of counters, all zero.
    pub fn new() -> Self {
        PoolStats::default()
    }

    /// HTTP/2 connections open now (from handshake done to the driver ending), busy or idle.
    pub fn connections(&self) -> usize {
        self.0.connections.load(Ordering::Relaxed)
    }

    /// Pool keys present now: a key stays while it has a connection, an attempt in flight, or
    /// a recent failure it is backing off from.
    pub fn keys(&self) -> usize {
        self.0.keys.load(Ordering::Relaxed)
    }

    /// CONNECT streams checked out now (each proxied connection holds one).
    pub fn streams(&self) -> usize {
        self.0.streams.load(Ordering::Relaxed)
    }

    /// HTTP/2 connections opened since the counters were created.
    pub fn connections_opened(&self) -> u64 {
        self.0.opened.load(Ordering::Relaxed)
    }
}

/// What a pool updates: its own counters and, optionally, shared node-wide ones.
#[derive(Debug, Clone, Default)]
pub(super) struct Gauges {
    pub(super) own: PoolStats,
    pub(super) shared: Option<PoolStats>,
}

impl Gauges {
    fn each(&self, f: impl Fn(&Counters)) {
        f(&self.own.0);
        if let Some(s) = &self.shared {
            f(&s.0);
        }
    }

    pub(super) fn connection_opened(&self) {
        self.each(|c| {
            c.connections.fetch_add(1, Ordering::Relaxed);
            c.opened.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(super) fn connection_closed(&self) {
        self.each(|c| {
            c.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }

    pub(super) fn key_added(&self) {
        self.each(|c| {
            c.keys.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(super) fn keys_removed(&self, n: usize) {
        if n > 0 {
            self.each(|c| {
                c.keys.fetch_sub(n, Ordering::Relaxed);
            });
        }
    }

    pub(super) fn stream_opened(&self) {
        self.each(|c| {
            c.streams.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(super) fn stream_closed(&self) {
        self.each(|c| {
            c.streams.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
