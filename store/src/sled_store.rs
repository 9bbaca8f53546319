//! sled backend: sled 0.34 plus a group-commit thread that really fsyncs.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::OsString,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::{CommitStats, Error, KvStore, Result, commit::GroupCommit};

/// Settings for [`SledStore::open_with`]; `Default` gives the values below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SledConfig {
    /// sled page-cache size in bytes. Default: `67108864` (64 MiB).
    pub cache_capacity_bytes: u64,
    /// Interval of sled's own background flush in milliseconds; `0` turns it off.
    /// Default: `100`. It only limits how much *un-synced* data a crash can lose;
    /// durability comes from [`KvStore::sync`] either way. It also bounds how much a burst
    /// of writes without syncs leaves to clean up: 1M channel records written in one go
    /// take 260-270 bytes each on disk with 100 ms, 270-350 with 500, 480 with none.
    pub flush_every_ms: u64,
    /// Under load (the previous group commit carried more than one write), the committer
    /// waits this long, in microseconds, before the next flush, so that more writers share
    /// it: fewer fsyncs and less CPU per write for at most this much latency. A lone writer
    /// is never delayed. `0` turns it off. Default: `200`.
    pub commit_delay_us: u64,
    /// Size of sled's log segments in bytes (a power of two, 256 to 16 MiB), for a new
    /// database: an existing one keeps the size it was created with (sled cannot change it).
    /// Larger segments leave less free space behind in the file: with 1M channel records,
    /// 4 MiB takes 20-25% less disk than sled's own 512 KiB. Default: `4194304` (4 MiB).
    pub segment_size_bytes: usize,
    /// zstd level (1 to 22) sled compresses what it writes with, `0` for none, for a new
    /// database: an existing one stays compressed or not as it was created (its writes then
    /// use this level, or 3). Saves about a quarter of the disk of channel records, for
    /// sled's flushes taking more CPU. Default: `0`.
    pub compression_level: i32,
}

impl Default for SledConfig {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: 100,
            commit_delay_us: 200,
            segment_size_bytes: 4 * 1024 * 1024,
            compression_level: 0,
        }
    }
}

/// A [`KvStore`] on sled 0.34, one sled `Tree` per namespace.
///
/// # Durability
///
/// sled 0.34's `Db::flush` ends in `sync_file_range`, which writes the pages but
/// neither flushes the disk cache nor persists file metadata, so it does not
/// survive power loss (sled issues #1351, #1452). It also never fsyncs the blob
/// files it writes for values above ~128 KiB, its `conf` file, or any directory.
/// A commit here is therefore: `Db::flush`, then `fsync` of every blob file that
/// is new or has grown since its last fsync (and of `blobs/` if names were
/// added), of the `db` file, and of the database directory if its entries
/// changed (snapshots are renamed into it). `open` also fsyncs `conf`, the
/// directory and its parent.
///
/// Commits run on a dedicated committer thread, never through `flush_async`
/// (which deadlocks under concurrent load, sled #1308); concurrent
/// [`sync`](KvStore::sync) calls share one commit. A failed commit poisons the
/// store (see [`Error::CommitFailed`]).
///
/// Dropping the store runs a final commit and joins the committer thread; sled's
/// own background threads then release the directory's lock, and a reopen in the
/// same process waits for that (see [`SledStore::open_with`]).
pub struct SledStore {
    // Declared first so it drops first: final commit, then join, while the
    // database is still open.
    commit: GroupCommit,
    db: sled::Db,
    /// Open trees by namespace. Holds every tree in the database (loaded at
    /// open), so a miss means the namespace does not exist and reads need not
    /// create it.
    trees: RwLock<HashMap<String, sled::Tree>>,
    path: PathBuf,
    /// Test hook: the next commit fails as if fsync had failed.
    #[cfg(test)]
    fail_next_commit: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the database in directory `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SledConfig::default())
    }

    /// Opens (or creates) the database in directory `path`.
    ///
    /// Fails if another process (or another `SledStore` in this process) has it
    /// open: sled holds an exclusive lock on `<path>/db`. A lock held by a store
    /// that is being dropped is waited for, up to 5 seconds.
    pub fn open_with(path: impl AsRef<Path>, config: SledConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        fs::create_dir_all(&path).map_err(|e| Error::io("create dir", &path, e))?;
        let created = created_with(&path);
        let sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_capacity_bytes)
            .segment_size(created.map_or(config.segment_size_bytes, |c| c.0))
            .use_compression(created.map_or(config.compression_level > 0, |c| c.1))
            .compression_factor(if config.compression_level > 0 { config.compression_level } else { 3 })
            .flush_every_ms((config.flush_every_ms > 0).then_some(config.flush_every_ms));
        let db = open_waiting_for_lock(&sled_config)?;

        // Make whatever creation or recovery wrote durable before reporting success.
        db.flush()?;
        let mut disk = DiskSync::open(&path)?;

        let mut trees = HashMap::new();
        for name in db.tree_names() {
            if let Ok(ns) = std::str::from_utf8(&name) {
                trees.insert(ns.to_owned(), db.open_tree(&name)?);
            }
        }
        info!(
            target: "store::sled",
            path = %path.display(),
            recovered = db.was_recovered(),
            namespaces = trees.len(),
            "opened"
        );

        #[cfg(test)]
        let fail_next_commit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(test)]
        let fail = std::sync::Arc::clone(&fail_next_commit);
        let committer_db = db.clone();
        let delay = std::time::Duration::from_micros(config.commit_delay_us);
        let commit = GroupCommit::start_with_delay(delay, move || {
            #[cfg(test)]
            if fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::io("fsync", &disk.db_path, io::Error::other("injected fault")));
            }
            committer_db.flush()?;
            disk.sync()
        })?;

        Ok(Self {
            commit,
            db,
            trees: RwLock::new(trees),
            path,
            #[cfg(test)]
            fail_next_commit,
        })
    }

    /// Snapshot of the group-commit counters.
    pub fn stats(&self) -> CommitStats {
        self.commit.stats()
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tree(&self, ns: &str) -> Option<sled::Tree> {
        self.trees.read().get(ns).cloned()
    }

    fn tree_for_write(&self, ns: &str) -> Result<sled::Tree> {
        if let Some(tree) = self.tree(ns) {
            return Ok(tree);
        }
        let mut trees = self.trees.write();
        if let Some(tree) = trees.get(ns) {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(ns)?;
        trees.insert(ns.to_owned(), tree.clone());
        debug!(target: "store::sled", ns, "created namespace");
        Ok(tree)
    }
}

impl KvStore for SledStore {
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.tree(ns) {
            Some(tree) => Ok(tree.get(key)?.map(|v| v.to_vec())),
            None => Ok(None),
        }
    }

    fn put(&self, ns: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.commit.ensure_writable()?;
        self.tree_for_write(ns)?.insert(key, value)?;
        self.commit.record_write();
        Ok(())
    }

    fn remove(&self, ns: &str, key: &[u8]) -> Result<()> {
        self.commit.ensure_writable()?;
        // Removing what is not there changes nothing: no write for the next sync to flush.
        if let Some(tree) = self.tree(ns)
            && tree.remove(key)?.is_some()
        {
            self.commit.record_write();
        }
        Ok(())
    }

    fn list(&self, ns: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(tree) = self.tree(ns) else {
            return Ok(Vec::new());
        };
        tree.iter()
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn for_each(&self, ns: &str, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        let Some(tree) = self.tree(ns) else {
            return Ok(());
        };
        for entry in tree.iter() {
            let (k, v) = entry?;
            f(&k, &v);
        }
        Ok(())
    }

    fn sync(&self) -> impl std::future::Future<Output = Result<()>> + Send {
        self.commit.sync()
    }

    fn sync_blocking(&self) -> Result<()> {
        self.commit.sync_blocking()
    }
}

/// The segment size and compression an existing database was created with (sled's `conf`),
/// which sled refuses to open it without.
fn created_with(dir: &Path) -> Option<(usize, bool)> {
    let conf = fs::read(dir.join("conf")).ok()?;
    let conf = String::from_utf8_lossy(&conf);
    let value = |key: &str| conf.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(": "));
    Some((value("segment_size")?.parse().ok()?, value("use_compression")?.parse().ok()?))
}

/// The fsyncs sled 0.34 leaves out. Owned by the committer thread.
#[derive(Debug)]
struct DiskSync {
    dir: PathBuf,
    db_path: PathBuf,
    /// Our own handle on sled's data file; fsync acts on the inode.
    db_file: File,
    blobs_dir: PathBuf,
    /// Blob file name -> length it had when last fsynced.
    blobs: HashMap<OsString, u64>,
    /// Entries of `dir` when it was last fsynced.
    entries: BTreeSet<OsString>,
}

impl DiskSync {
    /// Opens sled's data file and makes everything sled created durable.
    fn open(dir: &Path) -> Result<Self> {
        let db_path = dir.join("db");
        let db_file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(|e| Error::io("open", &db_path, e))?;
        let mut this = Self {
            dir: dir.to_path_buf(),
            db_path,
            db_file,
            blobs_dir: dir.join("blobs"),
            blobs: HashMap::new(),
            entries: BTreeSet::new(),
        };
        let conf = dir.join("conf");
        if conf.exists() {
            sync_file(&conf)?;
        }
        this.sync()?;
        // The directory itself may have just been created.
        if let Some(parent) = dir.parent() {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            sync_dir(parent)?;
        }
        Ok(this)
    }

    /// Makes everything `Db::flush` wrote durable. Call right after it.
    fn sync(&mut self) -> Result<()> {
        // Blobs first: the log entries in `db` point at them.
        self.sync_blobs()?;
        self.db_file.sync_all().map_err(|e| Error::io("fsync", &self.db_path, e))?;
        let entries = dir_entries(&self.dir)?;
        if entries != self.entries {
            sync_dir(&self.dir)?;
            self.entries = entries;
        }
        Ok(())
    }

    /// Fsyncs blob files that are new or grew since their last fsync. A blob may be
    /// half-written while we look (its write is then not covered by this commit);
    /// recording the length seen *before* the fsync makes the next commit redo it.
    fn sync_blobs(&mut self) -> Result<()> {
        let read_dir =
            fs::read_dir(&self.blobs_dir).map_err(|e| Error::io("read dir", &self.blobs_dir, e))?;
        let mut seen = HashMap::with_capacity(self.blobs.len());
        let mut added = false;
        for entry in read_dir {
            let entry = entry.map_err(|e| Error::io("read dir", &self.blobs_dir, e))?;
            let path = entry.path();
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                // Garbage-collected by sled after a snapshot.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", path, e)),
            };
            let name = entry.file_name();
            let previous = self.blobs.get(&name).copied();
            if previous != Some(len) {
                match File::open(&path) {
                    Ok(file) => file.sync_all().map_err(|e| Error::io("fsync", &path, e))?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("open", path, e)),
                }
                added |= previous.is_none();
            }
            seen.insert(name, len);
        }
        self.blobs = seen;
        if added {
            sync_dir(&self.blobs_dir)?;
        }
        Ok(())
    }
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io("fsync", path, e))
}

/// Persists a directory's entries (creations, renames). Unix only: other
/// platforms cannot open a directory as a file.
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    sync_file(path)?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn dir_entries(dir: &Path) -> Result<BTreeSet<OsString>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| Error::io("read dir", dir, e))
}

/// How long [`SledStore::open`] waits for another handle of the same directory to let go of
/// sled's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens sled, waiting up to [`LOCK_WAIT`] while the directory's file lock is held. sled's
/// background threads release the lock shortly *after* the last handle is dropped, so an
/// in-process reopen (a restarted node in the same process, tests) can otherwise fail
/// spuriously. Another process holding the store still fails, after the wait.
fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, atomic::Ordering},
    };

    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::*;

    fn temp_dir() -> TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn open_temp() -> (SledStore, TempDir) {
        let dir = temp_dir();
        let store = SledStore::open(dir.path().join("db")).expect("open");
        (store, dir)
    }

    crate::conformance::kv_conformance_suite!(super::open_temp());

    /// Every namespace's entries, as `list` returns them.
    fn dump(store: &SledStore, namespaces: &[&str]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        namespaces.iter().map(|ns| store.list(ns).expect("list")).collect()
    }

    #[test]
    fn reopen_restores_exact_state() {
        let dir = temp_dir();
        let path = dir.path().join("node");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let namespaces = ["channels", "meta", "blobs"];
        let before = {
            let store = SledStore::open(&path).expect("open");
            for i in 0u32..500 {
                store.put("channels", &i.to_be_bytes(), &[i as u8; 200]).expect("put");
            }
            for i in (0u32..500).step_by(3) {
                store.remove("channels", &i.to_be_bytes()).expect("remove");
            }
            store.put("channels", &7u32.to_be_bytes(), b"overwritten").expect("put");
            store.put("meta", b"height", b"42").expect("put");
            store.put("blobs", b"big", &big).expect("put");
            store.sync_blocking().expect("sync");
            dump(&store, &namespaces)
        };
        let store = SledStore::open(&path).expect("reopen");
        assert_eq!(dump(&store, &namespaces), before);
        assert_eq!(store.get("blobs", b"big").expect("get"), Some(big));
        assert_eq!(before[0].len(), 500 - 167);
    }

    #[test]
    fn reopen_right_after_drop_releases_lock() {
        let dir = temp_dir();
        let path = dir.path().join("db");
        for round in 0u8..5 {
            let store = SledStore::open(&path).expect("open right after drop");
            assert_eq!(store.list("ns").expect("list").len(), usize::from(round));
            store.put("ns", &[round], b"v").expect("put");
            // Deliberately no sync: drop must commit it.
        }
        let store = SledStore::open(&path).expect("open");
        assert_eq!(store.list("ns").expect("list").len(), 5);
    }

    #[test]
    fn second_open_of_same_path_fails_while_open() {
        let (store, _dir) = open_temp();
        assert!(SledStore::open(store.path()).is_err());
    }

    #[test]
    fn drop_commits_unsynced_writes() {
        let dir = temp_dir();
        let path = dir.path().join("db");
        let config = SledConfig { flush_every_ms: 0, ..SledConfig::default() };
        {
            let store = SledStore::open_with(&path, config.clone()).expect("open");
            store.put("ns", b"k", b"v").expect("put");
        }
        let store = SledStore::open_with(&path, config).expect("reopen");
        assert_eq!(store.get("ns", b"k").expect("get"), Some(b"v".to_vec()));
    }

    #[test]
    fn a_database_keeps_the_segment_size_and_compression_it_was_created_with() {
        let dir = temp_dir();
        let path = dir.path().join("db");
        // sled's own 512 KiB, uncompressed, as stores created before these settings are.
        let old = SledConfig { segment_size_bytes: 512 * 1024, ..SledConfig::default() };
        let compressed =
            SledConfig { segment_size_bytes: 1 << 20, compression_level: 3, ..SledConfig::default() };
        for (name, created, reopened) in [("old", &old, &SledConfig::default()), ("zstd", &compressed, &old)]
        {
            let path = path.join(name);
            {
                let store = SledStore::open_with(&path, created.clone()).expect("create");
                store.put("ns", b"k", &[7; 1000]).expect("put");
                store.sync_blocking().expect("sync");
            }
            assert_eq!(
                created_with(&path),
                Some((created.segment_size_bytes, created.compression_level > 0)),
                "{name}"
            );
            let store = SledStore::open_with(&path, reopened.clone()).expect("reopen with other settings");
            assert_eq!(store.get("ns", b"k").expect("get"), Some(vec![7; 1000]), "{name}");
        }
        // What sled itself would do without this: refuse.
        let conf = sled::Config::new().path(path.join("old")).segment_size(4 << 20);
        assert!(conf.open().is_err());
    }

    #[test]
    fn reads_do_not_create_namespaces() {
        let (store, _dir) = open_temp();
        assert_eq!(store.get("ghost", b"k").expect("get"), None);
        assert_eq!(store.list("ghost").expect("list"), vec![]);
        store.remove("ghost", b"k").expect("remove");
        assert!(!store.db.tree_names().iter().any(|n| &n[..] == b"ghost"));
    }

    #[test]
    fn open_creates_nested_directories() {
        let dir = temp_dir();
        let path = dir.path().join("a/b/c");
        let store = SledStore::open(&path).expect("open");
        store.put("ns", b"k", b"v").expect("put");
        store.sync_blocking().expect("sync");
        assert!(path.join("db").is_file());
        assert!(path.join("conf").is_file());
    }

    #[test]
    fn config_from_partial_toml() {
        let cases = [
            ("", SledConfig::default()),
            ("flush_every_ms = 0", SledConfig { flush_every_ms: 0, ..SledConfig::default() }),
            (
                "cache_capacity_bytes = 1024\nflush_every_ms = 20",
                SledConfig { cache_capacity_bytes: 1024, flush_every_ms: 20, ..SledConfig::default() },
            ),
        ];
        for (input, want) in cases {
            let got: SledConfig = toml::from_str(input).expect("parse");
            assert_eq!(got, want, "{input:?}");
        }
        assert!(toml::from_str::<SledConfig>("cache = 1").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_put_sync_group_commits() {
        const TASKS: u32 = 64;
        const ROUNDS: u32 = 20;
        let dir = temp_dir();
        let path = dir.path().join("db");
        let store = Arc::new(SledStore::open(&path).expect("open"));
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        let key = [task.to_be_bytes(), round.to_be_bytes()].concat();
                        store.put("vouchers", &key, &[task as u8; 200])?;
                        store.sync().await?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join").expect("put + sync");
        }
        let stats = store.stats();
        assert_eq!(stats.synced_writes, u64::from(TASKS * ROUNDS));
        assert!(stats.flushes < stats.synced_writes, "no group commit: {stats:?}");
        assert!(stats.max_batch > 1, "{stats:?}");

        drop(Arc::into_inner(store).expect("last reference"));
        let store = SledStore::open(&path).expect("reopen");
        let entries = store.list("vouchers").expect("list");
        assert_eq!(entries.len(), (TASKS * ROUNDS) as usize);
        for (key, value) in entries {
            assert_eq!(value, vec![key[3]; 200]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_commit_reaches_all_waiters_and_poisons() {
        let (store, _dir) = open_temp();
        let store = Arc::new(store);
        store.put("ns", b"before", b"1").expect("put");
        store.sync().await.expect("first commit");

        store.fail_next_commit.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0u8..8)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store.put("ns", &[i], b"v")?;
                    store.sync().await
                })
            })
            .collect();
        for task in tasks {
            let result = task.await.expect("join");
            assert!(
                matches!(result, Err(Error::CommitFailed(_))),
                "waiter believed its write durable: {result:?}"
            );
        }
        assert!(matches!(store.put("ns", b"after", b"v"), Err(Error::CommitFailed(_))));
        assert!(matches!(store.sync_blocking(), Err(Error::CommitFailed(_))));
        // Reads keep working; the store only refuses to promise durability.
        assert_eq!(store.get("ns", b"before").expect("get"), Some(b"1".to_vec()));
        let err = store.sync_blocking().expect_err("poisoned");
        assert!(err.to_string().contains("injected fault"), "{err}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put { ns: usize, key: Vec<u8>, value: Vec<u8> },
        Remove { ns: usize, key: Vec<u8> },
        Sync,
        Reopen,
    }

    const NAMESPACES: [&str; 3] = ["channels", "meta", "x"];

    fn op() -> impl Strategy<Value = Op> {
        let key = prop::collection::vec(0u8..4, 0..3);
        prop_oneof![
            6 => (0..NAMESPACES.len(), key.clone(), prop::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(ns, key, value)| Op::Put { ns, key, value }),
            3 => (0..NAMESPACES.len(), key).prop_map(|(ns, key)| Op::Remove { ns, key }),
            1 => Just(Op::Sync),
            1 => Just(Op::Reopen),
        ]
    }

    type Model = [BTreeMap<Vec<u8>, Vec<u8>>; 3];

    fn assert_matches_model(store: &SledStore, model: &Model) {
        for (ns, map) in NAMESPACES.iter().zip(model) {
            let want: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(store.list(ns).expect("list"), want, "namespace {ns}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn matches_btreemap_model_across_reopens(ops in prop::collection::vec(op(), 1..60)) {
            let dir = temp_dir();
            let path = dir.path().join("db");
            let mut store = SledStore::open(&path).expect("open");
            let mut model: Model = Default::default();
            for op in ops {
                match op {
                    Op::Put { ns, key, value } => {
                        store.put(NAMESPACES[ns], &key, &value).expect("put");
                        model[ns].insert(key, value);
                    }
                    Op::Remove { ns, key } => {
                        store.remove(NAMESPACES[ns], &key).expect("remove");
                        model[ns].remove(&key);
                    }
                    Op::Sync => {
                        store.sync_blocking().expect("sync");
                        assert_matches_model(&store, &model);
                    }
                    Op::Reopen => {
                        drop(store);
                        store = SledStore::open(&path).expect("reopen");
                        assert_matches_model(&store, &model);
                    }
                }
            }
            store.sync_blocking().expect("final sync");
            drop(store);
            let store = SledStore::open(&path).expect("final reopen");
            assert_matches_model(&store, &model);
        }
    }
}
