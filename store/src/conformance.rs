//! The conformance suite every [`KvStore`] backend must pass.
//!
//! Each case is a generic function over the store; [`kv_conformance_suite!`]
//! turns all of them into `#[test]`s for one backend:
//!
//! ```ignore
//! crate::conformance::kv_conformance_suite!(open_fresh_store());
//! ```
//!
//! The expression is evaluated once per test and must yield `(store, guard)`;
//! `guard` (e.g. a temp dir) lives until the test ends.

use crate::{CommitStats, KvStore, MemoryStore, SledStore};

/// Access to the backend's inherent `stats()` from generic code.
pub(crate) trait HasStats {
    fn commit_stats(&self) -> CommitStats;
}

impl HasStats for MemoryStore {
    fn commit_stats(&self) -> CommitStats {
        self.stats()
    }
}

impl HasStats for SledStore {
    fn commit_stats(&self) -> CommitStats {
        self.stats()
    }
}

/// Generates one `#[test]` per conformance case for the backend built by `$open`.
macro_rules! kv_conformance_suite {
    ($open:expr) => {
        $crate::conformance::kv_conformance_suite!(@cases $open;
            get_missing_is_none,
            put_then_get,
            overwrite_replaces_value,
            remove_deletes_key,
            remove_missing_is_noop,
            namespaces_are_isolated,
            list_is_in_key_order,
            list_unknown_namespace_is_empty,
            empty_key_and_value,
            large_values,
            sync_after_writes,
            sync_blocking_after_writes,
            sync_without_writes,
            stats_count_synced_writes,
            concurrent_writers_then_sync,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    let (store, _guard) = $open;
                    $crate::conformance::$case(&store);
                }
            )*
        }
    };
}
pub(crate) use kv_conformance_suite;

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(fut)
}

pub(crate) fn get_missing_is_none<S: KvStore>(s: &S) {
    assert_eq!(s.get("ns", b"nope").expect("get"), None);
    s.put("ns", b"a", b"1").expect("put");
    assert_eq!(s.get("ns", b"nope").expect("get"), None);
    assert_eq!(s.get("other", b"a").expect("get"), None);
}

pub(crate) fn put_then_get<S: KvStore>(s: &S) {
    s.put("channels", b"0xabc", b"voucher").expect("put");
    assert_eq!(s.get("channels", b"0xabc").expect("get"), Some(b"voucher".to_vec()));
}

pub(crate) fn overwrite_replaces_value<S: KvStore>(s: &S) {
    s.put("ns", b"k", b"first, longer value").expect("put");
    s.put("ns", b"k", b"second").expect("put");
    assert_eq!(s.get("ns", b"k").expect("get"), Some(b"second".to_vec()));
    assert_eq!(s.list("ns").expect("list"), vec![(b"k".to_vec(), b"second".to_vec())]);
}

pub(crate) fn remove_deletes_key<S: KvStore>(s: &S) {
    s.put("ns", b"a", b"1").expect("put");
    s.put("ns", b"b", b"2").expect("put");
    s.remove("ns", b"a").expect("remove");
    assert_eq!(s.get("ns", b"a").expect("get"), None);
    assert_eq!(s.list("ns").expect("list"), vec![(b"b".to_vec(), b"2".to_vec())]);
    s.put("ns", b"a", b"3").expect("put after remove");
    assert_eq!(s.get("ns", b"a").expect("get"), Some(b"3".to_vec()));
}

pub(crate) fn remove_missing_is_noop<S: KvStore>(s: &S) {
    s.remove("never-written", b"k").expect("remove in unknown namespace");
    s.put("ns", b"a", b"1").expect("put");
    s.remove("ns", b"zzz").expect("remove missing key");
    assert_eq!(s.list("ns").expect("list").len(), 1);
}

pub(crate) fn namespaces_are_isolated<S: KvStore>(s: &S) {
    s.put("channels", b"k", b"c").expect("put");
    s.put("meta", b"k", b"m").expect("put");
    assert_eq!(s.get("channels", b"k").expect("get"), Some(b"c".to_vec()));
    assert_eq!(s.get("meta", b"k").expect("get"), Some(b"m".to_vec()));
    s.remove("meta", b"k").expect("remove");
    assert_eq!(s.get("channels", b"k").expect("get"), Some(b"c".to_vec()));
    assert_eq!(s.list("meta").expect("list"), vec![]);
    assert_eq!(s.list("channels").expect("list").len(), 1);
}

pub(crate) fn list_is_in_key_order<S: KvStore>(s: &S) {
    // Bytewise order: shorter prefix first, 0x00 < 'a' < 0xff.
    let keys: [&[u8]; 7] = [b"b", b"a", &[0xff], b"ab", &[0x00], b"aa", &[0xff, 0x00]];
    for (i, key) in keys.iter().enumerate() {
        s.put("ns", key, &[u8::try_from(i).expect("small")]).expect("put");
    }
    let listed: Vec<Vec<u8>> = s.list("ns").expect("list").into_iter().map(|(k, _)| k).collect();
    let want: Vec<Vec<u8>> = vec![
        vec![0x00],
        b"a".to_vec(),
        b"aa".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0xff],
        vec![0xff, 0x00],
    ];
    assert_eq!(listed, want);
    let entries = s.list("ns").expect("list");
    assert_eq!(entries[1], (b"a".to_vec(), vec![1]), "values stay paired");
    let mut scanned = Vec::new();
    s.for_each("ns", &mut |k, v| scanned.push((k.to_vec(), v.to_vec()))).expect("scans");
    assert_eq!(scanned, entries, "a scan sees what a listing does");
}

pub(crate) fn list_unknown_namespace_is_empty<S: KvStore>(s: &S) {
    assert_eq!(s.list("nothing-here").expect("list"), vec![]);
    let mut seen = 0;
    s.for_each("nothing-here", &mut |_, _| seen += 1).expect("scans");
    assert_eq!(seen, 0);
}

pub(crate) fn empty_key_and_value<S: KvStore>(s: &S) {
    s.put("ns", b"k", b"").expect("put empty value");
    assert_eq!(s.get("ns", b"k").expect("get"), Some(vec![]));
    s.put("ns", b"", b"empty key").expect("put empty key");
    assert_eq!(s.get("ns", b"").expect("get"), Some(b"empty key".to_vec()));
    assert_eq!(s.list("ns").expect("list")[0].0, Vec::<u8>::new());
    s.sync_blocking().expect("sync");
    assert_eq!(s.get("ns", b"k").expect("get"), Some(vec![]));
}

/// Large enough for sled to store them as separate blob files.
pub(crate) fn large_values<S: KvStore>(s: &S) {
    let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let medium: Vec<u8> = vec![7; 200 * 1024];
    s.put("blobs", b"big", &big).expect("put big");
    s.put("blobs", b"medium", &medium).expect("put medium");
    s.sync_blocking().expect("sync");
    assert_eq!(s.get("blobs", b"big").expect("get"), Some(big));
    assert_eq!(s.get("blobs", b"medium").expect("get"), Some(medium.clone()));
    s.put("blobs", b"big", b"small now").expect("shrink");
    assert_eq!(s.get("blobs", b"big").expect("get"), Some(b"small now".to_vec()));
    assert_eq!(s.list("blobs").expect("list")[1].1, medium);
}

pub(crate) fn sync_after_writes<S: KvStore + HasStats>(s: &S) {
    for i in 0u32..100 {
        s.put("ns", &i.to_be_bytes(), &[1; 200]).expect("put");
    }
    s.remove("ns", &0u32.to_be_bytes()).expect("remove");
    block_on(s.sync()).expect("sync");
    assert_eq!(s.list("ns").expect("list").len(), 99);
    assert_eq!(s.commit_stats().synced_writes, 101);
}

pub(crate) fn sync_blocking_after_writes<S: KvStore + HasStats>(s: &S) {
    s.put("ns", b"a", b"1").expect("put");
    s.sync_blocking().expect("sync");
    s.put("ns", b"b", b"2").expect("put");
    s.sync_blocking().expect("sync");
    assert_eq!(s.list("ns").expect("list").len(), 2);
    let stats = s.commit_stats();
    assert_eq!((stats.flushes, stats.synced_writes), (2, 2));
}

pub(crate) fn sync_without_writes<S: KvStore + HasStats>(s: &S) {
    block_on(s.sync()).expect("sync");
    s.sync_blocking().expect("sync");
    assert_eq!(s.commit_stats(), CommitStats::default());
}

pub(crate) fn stats_count_synced_writes<S: KvStore + HasStats>(s: &S) {
    for i in 0u8..10 {
        s.put("ns", &[i], b"v").expect("put");
    }
    block_on(s.sync()).expect("sync");
    for i in 0u8..3 {
        s.remove("ns", &[i]).expect("remove");
    }
    s.sync_blocking().expect("sync");
    let CommitStats { flushes, synced_writes, max_batch, .. } = s.commit_stats();
    // Checkpoints run in the background on their own clock: not compared.
    assert_eq!((flushes, synced_writes, max_batch), (2, 13, 10));
    // Removing what is not there is no write: the next sync has nothing to flush.
    s.remove("ns", &[0]).expect("remove missing");
    s.remove("never-written", b"k").expect("remove in unknown namespace");
    s.sync_blocking().expect("sync");
    let CommitStats { flushes, synced_writes, max_batch, .. } = s.commit_stats();
    // Checkpoints run in the background on their own clock: not compared.
    assert_eq!((flushes, synced_writes, max_batch), (2, 13, 10));
}

pub(crate) fn concurrent_writers_then_sync<S: KvStore>(s: &S) {
    std::thread::scope(|scope| {
        for t in 0u8..8 {
            scope.spawn(move || {
                for i in 0u8..50 {
                    s.put("ns", &[t, i], &[t ^ i; 32]).expect("put");
                    if i % 10 == 0 {
                        s.sync_blocking().expect("sync");
                    }
                }
                s.sync_blocking().expect("sync");
            });
        }
    });
    let entries = s.list("ns").expect("list");
    assert_eq!(entries.len(), 400);
    for (key, value) in entries {
        assert_eq!(value, vec![key[0] ^ key[1]; 32]);
    }
}
