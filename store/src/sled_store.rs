//! sled backend: sled 0.34 as index and checkpoint, a journal with group commit for durability.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::OsString,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use std::{sync::Arc, thread::JoinHandle};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::{
    CommitStats, Error, KvStore, Result,
    commit::{CommitHandle, GroupCommit, Linger},
    journal::{self, FsJournal, Journal, JournalIo, Marker, decode_segment},
};

/// Settings for [`SledStore::open_with`]; `Default` gives the values below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SledConfig {
    /// sled page-cache size in bytes. Default: `67108864` (64 MiB).
    pub cache_capacity_bytes: u64,
    /// Interval of sled's own background flush in milliseconds; `0` turns it off.
    /// Default: `100`. Durability comes from the journal and checkpoints either way; this
    /// bounds how much a burst of writes leaves for sled to clean up: 1M channel records
    /// written in one go take 260-270 bytes each on disk with 100 ms, 270-350 with 500, 480
    /// with none.
    pub flush_every_ms: u64,
    /// Size of each of the two journal segment files, in bytes. A put larger than this
    /// fails; replay at open reads at most two segments. Default: `8388608` (8 MiB).
    pub journal_segment_bytes: u64,
    /// Interval between checkpoints (sled flush + fsync, off the hot path) in milliseconds;
    /// a checkpoint also starts when the active segment is half full. Default: `1000`.
    pub checkpoint_every_ms: u64,
    /// Writes per journal `fdatasync` worth waiting for under load. Default: `48` (a linger
    /// also ends when writers stop coming, so batches average somewhat below it).
    pub commit_batch_target: u64,
    /// Under load (the previous group commit carried more than one write), the committer
    /// waits up to this long, in microseconds, for `commit_batch_target` writers to share
    /// the next `fdatasync`, but only if the recent arrival rate says they will come within
    /// it, no longer than the batch takes to fill, and no longer than writers keep coming (a
    /// pause of a few inter-arrival times ends it). A lone writer is never delayed. `0` turns
    /// it off. Default: `8000`.
    pub commit_linger_us: u64,
    /// Size of sled's log segments in bytes (a power of two, 256 to 16 MiB), for a new
    /// database: an existing one keeps the size it was created with (sled cannot change it).
    /// Larger segments leave less free space behind in the file: with 1M channel records,
    /// 4 MiB takes 20-25% less disk than sled's own 512 KiB. Default: `4194304` (4 MiB).
    pub segment_size_bytes: usize,
}

impl Default for SledConfig {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: 100,
            journal_segment_bytes: 8 * 1024 * 1024,
            checkpoint_every_ms: 1000,
            commit_batch_target: 48,
            commit_linger_us: 8000,
            segment_size_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A [`KvStore`] on sled 0.34, one sled `Tree` per namespace, made durable by a journal.
///
/// # Durability
///
/// A put/remove is applied to sled in memory and appended to the journal's buffer, both
/// under a lock striped by key, so that each key's entries are journaled in the order sled
/// applied them. [`sync`](KvStore::sync) is served by the committer thread: one positioned
/// write of every buffered entry into the active preallocated segment and one `fdatasync`
/// of that file (group commit: concurrent syncs share it). That is the hot path's only
/// disk work; see the `journal` module for the entry format and why preallocation with
/// zeros keeps `fdatasync` to data blocks.
///
/// sled itself is the index and the checkpoint. A checkpointer thread, every
/// `checkpoint_every_ms` or when a segment is half full, switches the journal to its other
/// segment, records in a meta tree that the old segment's epoch is in sled, and makes sled
/// durable: `Db::flush`, then `fsync` of sled's files. sled 0.34's `Db::flush` ends in
/// `sync_file_range`, which neither flushes the disk cache nor persists metadata (sled
/// issues #1351, #1452), and it never fsyncs its blob files (values above ~128 KiB), its
/// `conf` file, or any directory. So a checkpoint fsyncs every blob file that is new or
/// grew since its last fsync (and `blobs/` if names were added), the `db` file, and the
/// database directory if its entries changed (snapshots are renamed into it). Only after
/// that may the old segment be overwritten; writers that fill the active segment before
/// then wait (backpressure).
///
/// Open replays, in epoch order, every journal entry newer than the recorded checkpoint
/// into sled and checkpoints before returning, so replay is bounded by two segments.
///
/// Commits run on a dedicated committer thread, never through sled's `flush_async`
/// (which deadlocks under concurrent load, sled #1308). A failed `fdatasync` or checkpoint
/// poisons the store (see [`Error::CommitFailed`]).
///
/// Dropping the store runs a final checkpoint and commit and joins both threads; sled's
/// own background threads then release the directory's lock, and a reopen in the same
/// process waits for that (see [`SledStore::open_with`]).
pub struct SledStore {
    // Declared first so it drops first (after `Drop::drop` ran the final checkpoint): final
    // commit, then join, while the database is still open.
    commit: GroupCommit,
    journal: Arc<Journal>,
    checkpointer: Option<JoinHandle<()>>,
    /// Orders each key's sled write and journal append (see the durability docs).
    stripes: Box<[Mutex<()>]>,
    db: sled::Db,
    /// Open trees by namespace. Holds every tree in the database (loaded at
    /// open), so a miss means the namespace does not exist and reads need not
    /// create it.
    trees: RwLock<HashMap<String, sled::Tree>>,
    path: PathBuf,
    segment_bytes: u64,
    /// Test hook: the next commit fails as if fdatasync had failed.
    #[cfg(test)]
    fail_next_commit: Arc<std::sync::atomic::AtomicBool>,
    /// Journal entries replayed by open.
    #[cfg(test)]
    replayed: usize,
}

/// The sled tree holding the checkpoint marker. Not UTF-8, so never a namespace.
const META_TREE: &[u8] = b"\xffx402-store-journal";
const MARKER_KEY: &[u8] = b"checkpoint";
/// Number of key stripes.
const STRIPES: usize = 64;

/// Test hooks of [`SledStore::open_inner`].
#[derive(Default)]
pub(crate) struct Hooks {
    /// The journal's files; the file system when `None`.
    pub(crate) io: Option<Box<dyn JournalIo>>,
    /// Runs at the end of each checkpoint's persist step; an error fails the checkpoint.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) after_checkpoint: Option<Box<dyn FnMut() -> Result<()> + Send>>,
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
        Self::open_inner(path.as_ref(), &config, Hooks::default())
    }

    pub(crate) fn open_inner(path: &Path, config: &SledConfig, hooks: Hooks) -> Result<Self> {
        let path = path.to_path_buf();
        fs::create_dir_all(&path).map_err(|e| Error::io("create dir", &path, e))?;
        let created = created_with(&path);
        let sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_capacity_bytes)
            .segment_size(created.unwrap_or(config.segment_size_bytes))
            .flush_every_ms((config.flush_every_ms > 0).then_some(config.flush_every_ms));
        let db = open_waiting_for_lock(&sled_config)?;
        let mut disk = DiskSync::open(&path)?;
        let meta = db.open_tree(META_TREE)?;

        // Replay what the journal holds beyond the last checkpoint, oldest epoch first.
        let io = hooks.io.unwrap_or_else(|| Box::new(FsJournal::new(&path)));
        let marker = meta.get(MARKER_KEY)?.and_then(|m| Marker::from_bytes(&m));
        let marker = marker.unwrap_or(Marker { checkpointed: 0, floor: 0 });
        let mut segments = Vec::new();
        for index in 0..2 {
            let data = io.read(index).map_err(|e| Error::io("read journal", io.path(index), e))?;
            if let Some((epoch, entries)) = data.as_deref().and_then(decode_segment) {
                segments.push((epoch, entries));
            }
        }
        let newest = segments.iter().map(|(epoch, _)| *epoch).max().unwrap_or(0);
        segments.retain(|(epoch, _)| *epoch > marker.checkpointed);
        segments.sort_by_key(|(epoch, _)| *epoch);
        let mut replayed = 0usize;
        let mut replay_trees: HashMap<String, sled::Tree> = HashMap::new();
        for entry in segments.into_iter().flat_map(|(_, entries)| entries) {
            let tree = match replay_trees.get(&entry.ns) {
                Some(tree) => tree.clone(),
                None => {
                    let tree = db.open_tree(&entry.ns)?;
                    replay_trees.insert(entry.ns.clone(), tree.clone());
                    tree
                }
            };
            match entry.value {
                Some(value) => tree.insert(entry.key, value)?,
                None => tree.remove(entry.key)?,
            };
            replayed += 1;
        }

        // A fresh epoch (see the journal module docs), recorded with the open checkpoint:
        // every replayed entry and whatever creation or recovery wrote are now durable.
        let epoch = marker.floor.max(marker.checkpointed).max(newest) + 2;
        meta.insert(MARKER_KEY, &Marker { checkpointed: epoch - 1, floor: epoch }.to_bytes()[..])?;
        db.flush()?;
        disk.sync()?;
        let journal = Arc::new(Journal::new(io.as_ref(), config.journal_segment_bytes, epoch)?);

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
            replayed,
            epoch,
            "opened"
        );

        #[cfg(test)]
        let fail_next_commit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(test)]
        let fail = Arc::clone(&fail_next_commit);
        let committer_journal = Arc::clone(&journal);
        let mut spare = Vec::with_capacity(64 * 1024);
        let linger = Linger {
            target: config.commit_batch_target.max(1),
            budget: Duration::from_micros(config.commit_linger_us),
        };
        let commit = GroupCommit::start_with_linger(linger, move || {
            #[cfg(test)]
            if fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::io("fdatasync", "journal", io::Error::other("injected fault")));
            }
            committer_journal.write_pending(&mut spare)
        })?;

        let checkpoint = Checkpointer {
            journal: Arc::clone(&journal),
            handle: commit.handle(),
            db: db.clone(),
            meta,
            disk,
            #[cfg(any(test, feature = "test-utils"))]
            after_checkpoint: hooks.after_checkpoint,
        };
        let every = Duration::from_millis(config.checkpoint_every_ms.max(1));
        let checkpointer = std::thread::Builder::new()
            .name("x402-store-checkpoint".into())
            .spawn(move || checkpoint.run(every))
            .map_err(|e| Error::io("spawn checkpoint thread", "", e))?;

        Ok(Self {
            commit,
            journal,
            checkpointer: Some(checkpointer),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            db,
            trees: RwLock::new(trees),
            path,
            segment_bytes: config.journal_segment_bytes,
            #[cfg(test)]
            fail_next_commit,
            #[cfg(test)]
            replayed,
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

    /// The lock that orders `key`'s sled write and journal append.
    fn stripe(&self, ns: &str, key: &[u8]) -> parking_lot::MutexGuard<'_, ()> {
        // FNV-1a: cheap, and an attacker choosing keys can at worst make writers share one
        // lock (hold times are a sled insert and a buffer copy).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in ns.as_bytes().iter().chain([0xff].iter()).chain(key) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.stripes[(hash % STRIPES as u64) as usize].lock()
    }

    /// Refuses entries the journal cannot hold, before anything is applied.
    fn check_size(&self, ns: &str, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let len = journal::entry_len(ns, key, value) as u64;
        if ns.len() > usize::from(u8::MAX) || u32::try_from(key.len()).is_err() || len > self.segment_bytes {
            return Err(Error::EntryTooLarge { len, limit: self.segment_bytes });
        }
        Ok(())
    }

    /// An append failed because the store failed: report why.
    fn append_error(&self, err: Error) -> Error {
        self.commit.ensure_writable().err().unwrap_or(err)
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
        self.check_size(ns, key, Some(value))?;
        let tree = self.tree_for_write(ns)?;
        {
            let _order = self.stripe(ns, key);
            tree.insert(key, value)?;
            self.journal.append(ns, key, Some(value)).map_err(|e| self.append_error(e))?;
        }
        self.commit.record_write();
        Ok(())
    }

    fn remove(&self, ns: &str, key: &[u8]) -> Result<()> {
        self.commit.ensure_writable()?;
        self.check_size(ns, key, None)?;
        // Removing what is not there changes nothing: no write for the next sync to flush.
        if let Some(tree) = self.tree(ns) {
            let _order = self.stripe(ns, key);
            if tree.remove(key)?.is_some() {
                self.journal.append(ns, key, None).map_err(|e| self.append_error(e))?;
                drop(_order);
                self.commit.record_write();
            }
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

impl Drop for SledStore {
    fn drop(&mut self) {
        // Final checkpoint (by the checkpointer, on its way out), then `commit` drops:
        // final journal commit and join.
        self.journal.shut_down();
        if let Some(thread) = self.checkpointer.take()
            && thread.join().is_err()
        {
            tracing::error!(target: "store::sled", "checkpoint thread panicked");
        }
    }
}

/// The checkpoint thread's state.
struct Checkpointer {
    journal: Arc<Journal>,
    handle: CommitHandle,
    db: sled::Db,
    meta: sled::Tree,
    disk: DiskSync,
    #[cfg(any(test, feature = "test-utils"))]
    after_checkpoint: Option<Box<dyn FnMut() -> Result<()> + Send>>,
}

impl Checkpointer {
    fn run(mut self, every: Duration) {
        /// Writers waiting for a free segment would wait forever if this thread died.
        struct FailOnPanic(Arc<Journal>, CommitHandle);
        impl Drop for FailOnPanic {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.fail();
                    self.1.poison(Error::Closed);
                }
            }
        }
        let _guard = FailOnPanic(Arc::clone(&self.journal), self.handle.clone());
        while self.journal.wait_for_checkpoint(every) {
            if !self.checkpoint() {
                return;
            }
        }
        // Closing: leave everything in sled, so that the next open replays nothing.
        self.checkpoint();
    }

    /// One checkpoint; `false` (and the store poisoned) if it failed.
    fn checkpoint(&mut self) -> bool {
        let started = std::time::Instant::now();
        let Self { journal, db, meta, disk, .. } = self;
        #[cfg(any(test, feature = "test-utils"))]
        let hook = &mut self.after_checkpoint;
        let result = journal.checkpoint(|marker| {
            meta.insert(MARKER_KEY, &marker.to_bytes()[..])?;
            db.flush()?;
            disk.sync()?;
            #[cfg(any(test, feature = "test-utils"))]
            if let Some(hook) = hook {
                hook()?;
            }
            debug!(target: "store::sled", epoch = marker.checkpointed, "checkpoint persisted");
            Ok(())
        });
        match result {
            Ok(ran) => {
                if ran {
                    self.handle.record_checkpoint();
                    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    debug!(target: "store::sled", elapsed_us, "checkpoint done");
                }
                true
            }
            Err(err) => {
                self.journal.fail();
                self.handle.poison(err);
                false
            }
        }
    }
}

/// The segment size an existing database was created with (sled's `conf`), which sled
/// refuses to open it without.
fn created_with(dir: &Path) -> Option<usize> {
    let conf = fs::read(dir.join("conf")).ok()?;
    let conf = String::from_utf8_lossy(&conf);
    conf.lines().find_map(|l| l.strip_prefix("segment_size")?.strip_prefix(": "))?.parse().ok()
}

/// The fsyncs sled 0.34 leaves out. Owned by the checkpoint thread.
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
    fn a_database_keeps_the_segment_size_it_was_created_with() {
        let dir = temp_dir();
        let path = dir.path().join("db");
        // sled's own 512 KiB, as stores created before this setting are.
        let old = SledConfig { segment_size_bytes: 512 * 1024, ..SledConfig::default() };
        {
            let store = SledStore::open_with(&path, old.clone()).expect("create");
            store.put("ns", b"k", &[7; 1000]).expect("put");
            store.sync_blocking().expect("sync");
        }
        assert_eq!(created_with(&path), Some(old.segment_size_bytes));
        let store = SledStore::open_with(&path, SledConfig::default()).expect("reopen with the new default");
        assert_eq!(store.get("ns", b"k").expect("get"), Some(vec![7; 1000]));
        drop(store);
        // What sled itself would do without this: refuse.
        let conf = sled::Config::new().path(&path).segment_size(4 << 20);
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
                "journal_segment_bytes = 4096\ncommit_linger_us = 0",
                SledConfig { journal_segment_bytes: 4096, commit_linger_us: 0, ..SledConfig::default() },
            ),
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

    /// Copies a live store's directory: what a crash at this moment could leave (sled as of
    /// its last flush, the journal as written).
    fn crash_copy(store: &SledStore, to: &Path) {
        crate::test_utils::copy_dir(store.path(), to).expect("copy");
    }

    fn no_background_checkpoints() -> SledConfig {
        SledConfig { flush_every_ms: 0, checkpoint_every_ms: 3_600_000, ..SledConfig::default() }
    }

    #[test]
    fn synced_writes_are_replayed_from_the_journal() {
        let dir = temp_dir();
        let store = SledStore::open_with(dir.path().join("live"), no_background_checkpoints()).expect("open");
        for i in 0u32..200 {
            store.put("channels", &i.to_be_bytes(), &[i as u8; 100]).expect("put");
        }
        store.remove("channels", &7u32.to_be_bytes()).expect("remove");
        store.sync_blocking().expect("sync");
        assert_eq!(store.stats().checkpoints, 0);
        let copy = dir.path().join("crashed");
        crash_copy(&store, &copy);

        let reopened = SledStore::open_with(&copy, no_background_checkpoints()).expect("reopen");
        assert_eq!(reopened.replayed, 201);
        assert_eq!(reopened.list("channels").expect("list"), store.list("channels").expect("list"));
        drop(reopened);
        // Open checkpointed the replay: nothing to replay the second time.
        let again = SledStore::open_with(&copy, no_background_checkpoints()).expect("reopen");
        assert_eq!(again.replayed, 0);
        assert_eq!(again.list("channels").expect("list").len(), 199);
    }

    #[test]
    fn torn_or_corrupt_journal_tail_is_dropped() {
        let dir = temp_dir();
        let store = SledStore::open_with(dir.path().join("live"), no_background_checkpoints()).expect("open");
        for i in 0u8..10 {
            store.put("ns", &[i], &[i; 50]).expect("put");
        }
        store.sync_blocking().expect("sync");
        let entry = journal::entry_len("ns", &[0], Some(&[0; 50]));
        // (damage to the last entry's bytes, entries expected back)
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: [(&str, Damage, usize); 4] = [
            ("intact", Box::new(|_| {}), 10),
            ("crc flip in last entry", Box::new(move |j| j[9 * entry + 20] ^= 0x40), 9),
            ("last entry torn to zeros", Box::new(move |j| j[9 * entry + 5..10 * entry].fill(0)), 9),
            ("fifth entry corrupt", Box::new(move |j| j[4 * entry + 1] ^= 1), 4),
        ];
        for (name, damage, want) in cases {
            let copy = dir.path().join(name.replace(' ', "-"));
            crash_copy(&store, &copy);
            let wal = copy.join("journal-0.wal");
            let mut bytes = fs::read(&wal).expect("read journal");
            damage(&mut bytes);
            fs::write(&wal, &bytes).expect("write journal");
            let reopened = SledStore::open_with(&copy, no_background_checkpoints()).expect("reopen");
            assert_eq!(reopened.replayed, want, "{name}");
            let keys: Vec<u8> = reopened.list("ns").expect("list").into_iter().map(|(k, _)| k[0]).collect();
            assert_eq!(keys, (0..want as u8).collect::<Vec<_>>(), "{name}");
        }
    }

    #[test]
    fn full_segments_switch_and_wait_for_checkpoints() {
        // 4 KiB segments, a slow checkpoint and no timer: writers fill a segment, switch, fill
        // the other and must wait for the checkpoint that frees the first.
        let dir = temp_dir();
        let path = dir.path().join("db");
        let config = SledConfig { journal_segment_bytes: 4096, ..no_background_checkpoints() };
        let hooks = Hooks {
            io: None,
            after_checkpoint: Some(Box::new(|| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            })),
        };
        let store = SledStore::open_inner(&path, &config, hooks).expect("open");
        std::thread::scope(|s| {
            for t in 0u8..4 {
                let store = &store;
                s.spawn(move || {
                    for i in 0u8..100 {
                        store.put("ns", &[t, i], &[t ^ i; 100]).expect("put");
                        if i % 7 == 0 {
                            store.sync_blocking().expect("sync");
                        }
                    }
                });
            }
        });
        store.sync_blocking().expect("sync");
        // 400 entries of ~120 bytes: ~48 KiB through 4 KiB segments.
        let checkpoints = store.stats().checkpoints;
        assert!(checkpoints >= 10, "{:?}", store.stats());
        let journal_len = fs::metadata(path.join("journal-1.wal")).expect("journal").len();
        assert_eq!(journal_len, 4096, "segments keep their preallocated size");
        let too_big = store.put("ns", b"big", &[0; 5000]);
        assert!(matches!(too_big, Err(Error::EntryTooLarge { .. })), "{too_big:?}");
        let before = store.list("ns").expect("list");
        assert_eq!(before.len(), 400);
        drop(store);
        let store = SledStore::open_with(&path, config).expect("reopen");
        assert_eq!(store.list("ns").expect("list"), before);
    }

    #[test]
    fn segment_size_change_replays_then_resizes() {
        let dir = temp_dir();
        // 20 entries of ~120 bytes stay below half a segment: no checkpoint before the copy.
        let small = SledConfig { journal_segment_bytes: 8192, ..no_background_checkpoints() };
        let store = SledStore::open_with(dir.path().join("live"), small).expect("open");
        for i in 0u8..20 {
            store.put("ns", &[i], &[i; 100]).expect("put");
        }
        store.sync_blocking().expect("sync");
        let copy = dir.path().join("crashed");
        crash_copy(&store, &copy);
        let bigger = SledConfig { journal_segment_bytes: 65536, ..no_background_checkpoints() };
        let reopened = SledStore::open_with(&copy, bigger).expect("reopen");
        assert_eq!(reopened.replayed, 20);
        assert_eq!(reopened.list("ns").expect("list"), store.list("ns").expect("list"));
        for i in 0..2 {
            let len = fs::metadata(copy.join(format!("journal-{i}.wal"))).expect("journal").len();
            assert_eq!(len, 65536);
        }
    }

    #[test]
    fn failed_checkpoint_poisons() {
        let dir = temp_dir();
        let hooks = Hooks {
            io: None,
            after_checkpoint: Some(Box::new(|| {
                Err(Error::io("fsync", "/fake/db", io::Error::other("checkpoint fault")))
            })),
        };
        let config = SledConfig { checkpoint_every_ms: 1, ..SledConfig::default() };
        let store = SledStore::open_inner(&dir.path().join("db"), &config, hooks).expect("open");
        store.put("ns", b"k", b"v").expect("put");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.commit.ensure_writable().is_ok() {
            assert!(std::time::Instant::now() < deadline, "checkpoint never failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let err = store.put("ns", b"k2", b"v").expect_err("poisoned");
        assert!(err.to_string().contains("checkpoint fault"), "{err}");
        assert!(matches!(store.sync_blocking(), Err(Error::CommitFailed(_))));
        assert_eq!(store.get("ns", b"k").expect("get"), Some(b"v".to_vec()));
    }

    #[test]
    fn checkpoints_run_in_the_background() {
        let dir = temp_dir();
        let config = SledConfig { checkpoint_every_ms: 5, ..SledConfig::default() };
        let store = SledStore::open_with(dir.path().join("db"), config).expect("open");
        store.put("ns", b"k", b"v").expect("put");
        store.sync_blocking().expect("sync");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.stats().checkpoints == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Nothing new: idle checkpoints are skipped.
        let idle = store.stats().checkpoints;
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(store.stats().checkpoints, idle);
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
