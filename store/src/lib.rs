//! Durable key-value storage for the x402 Channels provider node.
//!
//! The node must store each channel's latest payment voucher durably *before*
//! it serves the paid response: acting on state that is not yet on disk can lose
//! funds after a crash. This crate gives it a small key-value interface,
//! [`KvStore`], with two backends:
//!
//! - [`SledStore`]: sled 0.34 on disk as the index, made durable by an append-only
//!   journal: a group-commit thread writes the new entries and runs one `fdatasync`,
//!   and a checkpoint thread flushes sled and `fsync`s its files off the hot path
//!   (see [`SledStore`] for why each fsync is there).
//! - [`MemoryStore`]: a `BTreeMap` per namespace, for tests and dev nodes.
//!
//! Writes ([`KvStore::put`], [`KvStore::remove`]) are visible to reads at once but
//! are durable only once a later [`KvStore::sync`] (or
//! [`KvStore::sync_blocking`]) has returned `Ok`. Concurrent syncs share one flush
//! (group commit), so many requests per second each pay for part of one fsync.
//!
//! ```
//! use x402_store::{KvStore, SledStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = SledStore::open(dir.path().join("node-db"))?;
//! store.put("channels", b"0xabc", b"voucher bytes")?;
//! store.sync().await?; // only now may the paid response be served
//! assert_eq!(store.get("channels", b"0xabc")?, Some(b"voucher bytes".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! Feature flags: `test-utils` exposes the module `test_utils` (a simulated journal disk for
//! power-cut tests).
//!
//! Tracing targets: `store::commit` (one debug event per flush with its timing
//! and batch size, errors on failed commits) and `store::sled` (open with the
//! number of replayed journal entries, checkpoints).

mod commit;
mod error;
mod journal;
mod memory;
mod sled_store;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod power_cut;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

use std::future::Future;

pub use crate::{
    error::{Error, Result},
    memory::MemoryStore,
    sled_store::{SledConfig, SledStore},
};

/// A small namespaced key-value store with explicit durability points.
///
/// A namespace (`ns`) is an independent key space, e.g. `"channels"` or `"meta"`
/// (a sled `Tree`, or a separate map). Keys are ordered bytewise.
///
/// The trait is not object-safe because [`sync`](Self::sync) returns
/// `impl Future`; code against it with generics (`S: KvStore`).
pub trait KvStore: Send + Sync + 'static {
    /// Returns the value stored under `key` in `ns`, if any.
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Stores `value` under `key` in `ns`, replacing any previous value.
    ///
    /// Visible to [`get`](Self::get) and [`list`](Self::list) at once; durable
    /// only after a later [`sync`](Self::sync) completes.
    fn put(&self, ns: &str, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key` from `ns` (a no-op if absent). Durable like [`put`](Self::put).
    fn remove(&self, ns: &str, key: &[u8]) -> Result<()>;

    /// All entries of `ns` in key order (empty if the namespace was never written).
    fn list(&self, ns: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Calls `f` with every entry of `ns` in key order, as [`list`](Self::list) returns them,
    /// without holding them all in memory at once (a scan of a large namespace).
    fn for_each(&self, ns: &str, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for (k, v) in self.list(ns)? {
            f(&k, &v);
        }
        Ok(())
    }

    /// Resolves once every put/remove that happened before this call is durable on
    /// disk (for the memory backend: at once). Concurrent callers share one flush
    /// (group commit).
    ///
    /// The target is taken when `sync` is *called*, not when the future is first
    /// polled. An `Err` means the covered writes may not be durable.
    fn sync(&self) -> impl Future<Output = Result<()>> + Send;

    /// Blocking variant of [`sync`](Self::sync) for non-async callers. Blocks the
    /// calling thread: inside a tokio runtime prefer `sync().await`.
    fn sync_blocking(&self) -> Result<()>;
}

/// Group-commit counters, from [`SledStore::stats`] or [`MemoryStore::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Number of hot-path flushes (journal write + `fdatasync` for [`SledStore`]) that made
    /// new writes durable.
    pub flushes: u64,
    /// Number of writes (puts and removes) made durable by those flushes.
    pub synced_writes: u64,
    /// Most writes made durable by a single flush.
    pub max_batch: u64,
    /// Checkpoint rounds (sled flush + fsync of sled's files) run off the hot path; `0` for
    /// backends without a journal.
    pub checkpoints: u64,
}

impl CommitStats {
    /// Accounts for one flush that made `batch` new writes durable.
    fn record(&mut self, batch: u64) {
        self.flushes += 1;
        self.synced_writes += batch;
        self.max_batch = self.max_batch.max(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_record_batches() {
        let mut stats = CommitStats::default();
        for batch in [3, 10, 1] {
            stats.record(batch);
        }
        assert_eq!(stats, CommitStats { flushes: 3, synced_writes: 14, max_batch: 10, checkpoints: 0 });
    }
}
