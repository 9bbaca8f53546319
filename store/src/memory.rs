//! In-memory backend for tests and dev nodes. Nothing survives a restart.

use std::collections::BTreeMap;

use parking_lot::{Mutex, RwLock};

use crate::{CommitStats, KvStore, Result};

type Namespace = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`KvStore`] backed by one `BTreeMap` per namespace.
///
/// [`sync`](KvStore::sync) resolves at once: there is no disk. It still keeps the
/// same [`CommitStats`] as [`SledStore`](crate::SledStore) (each sync with new
/// writes counts as one flush), so tests can assert on them for either backend.
#[derive(Debug, Default)]
pub struct MemoryStore {
    namespaces: RwLock<BTreeMap<String, Namespace>>,
    /// Writes so far, and writes covered by the last sync.
    commit: Mutex<MemoryCommit>,
}

#[derive(Debug, Default)]
struct MemoryCommit {
    writes: u64,
    synced: u64,
    stats: CommitStats,
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Snapshot of the commit counters.
    pub fn stats(&self) -> CommitStats {
        self.commit.lock().stats
    }

    fn record_write(&self) {
        self.commit.lock().writes += 1;
    }
}

impl KvStore for MemoryStore {
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.namespaces.read().get(ns).and_then(|map| map.get(key)).cloned())
    }

    fn put(&self, ns: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let mut namespaces = self.namespaces.write();
        match namespaces.get_mut(ns) {
            Some(map) => {
                map.insert(key.to_vec(), value.to_vec());
            }
            None => {
                namespaces.insert(ns.to_owned(), BTreeMap::from([(key.to_vec(), value.to_vec())]));
            }
        }
        drop(namespaces);
        self.record_write();
        Ok(())
    }

    fn remove(&self, ns: &str, key: &[u8]) -> Result<()> {
        let removed = self.namespaces.write().get_mut(ns).is_some_and(|map| map.remove(key).is_some());
        if removed {
            self.record_write();
        }
        Ok(())
    }

    fn list(&self, ns: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .namespaces
            .read()
            .get(ns)
            .map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn sync(&self) -> impl std::future::Future<Output = Result<()>> + Send {
        std::future::ready(self.sync_blocking())
    }

    fn sync_blocking(&self) -> Result<()> {
        let mut commit = self.commit.lock();
        let batch = commit.writes - commit.synced;
        if batch > 0 {
            commit.synced = commit.writes;
            commit.stats.record(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance::kv_conformance_suite!((MemoryStore::new(), ()));

    #[test]
    fn sync_counts_one_flush_per_sync_with_writes() {
        let store = MemoryStore::new();
        store.sync_blocking().expect("sync");
        assert_eq!(store.stats().flushes, 0);
        for i in 0u8..5 {
            store.put("ns", &[i], b"v").expect("put");
        }
        store.sync_blocking().expect("sync");
        store.sync_blocking().expect("sync");
        assert_eq!(store.stats(), CommitStats { flushes: 1, synced_writes: 5, max_batch: 5, checkpoints: 0 });
    }
}
