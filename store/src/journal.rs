//! The voucher journal: an append-only write-ahead log in two preallocated segment files.
//!
//! Every put/remove is applied to sled (in memory) and appended, as one entry, to an
//! in-memory buffer. The committer thread ([`Journal::write_pending`]) writes the buffer with
//! one positioned write into the active segment and runs one `fdatasync` of that file: that is
//! the only disk work on the hot path. The segment files are preallocated by writing zeros
//! and fsyncing file and directory once, so the file size and its extents never change
//! afterwards and `fdatasync` has data blocks to write but no metadata (an `fallocate`d
//! extent would be "unwritten" and need a metadata update on first write).
//!
//! # Entry format
//!
//! ```text
//! crc32 (u32 LE) | payload length (u32 LE) | epoch (u64 LE) | payload
//! payload = kind (1 put, 2 remove) | ns length (u8) | key length (u32 LE) | ns | key | value
//! ```
//!
//! The CRC covers everything after itself (length, epoch, payload). Each use of a segment has
//! a fresh epoch, and its entries are written from offset 0 in order. Replay of a segment
//! takes the epoch of its first entry and stops at the first entry whose CRC fails (a torn or
//! never-written tail, zeros included) or whose epoch differs (a stale tail of an earlier use).
//!
//! # Checkpoints
//!
//! A checkpoint ([`Journal::checkpoint`]) switches appends to the other segment with the next
//! epoch (*E+1*), records in sled's meta tree that epochs `<= E` are in sled, then flushes
//! sled and fsyncs its files. Only then may the segment of epoch *E* be reused. Every entry
//! of epoch *E* was applied to sled before it was appended, hence before the switch, hence
//! before the recorded marker: a sled state that has the marker has all of them (sled
//! recovers a prefix of its own log). A writer that finds the active segment full switches
//! itself if the other segment is free, and otherwise waits for the running checkpoint
//! (backpressure); it never overwrites entries that sled does not yet hold.
//!
//! Epochs must never repeat within a segment, or replay could take a stale tail for new
//! entries. The meta record also holds the active epoch at checkpoint time (`floor`); a new
//! segment use needs the previous checkpoint done, so no epoch above `floor + 1` was ever
//! written, and open starts at `max(floor, every epoch seen) + 2`.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use parking_lot::{Condvar, Mutex};

use crate::{Error, Result};

/// Bytes before an entry's payload.
pub(crate) const HEADER_LEN: usize = 16;
const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
/// Payload bytes before the namespace.
const PAYLOAD_PREFIX: usize = 1 + 1 + 4;

/// One segment file, written at offsets and made durable with `fdatasync`.
pub(crate) trait SegmentFile: Send + Sync {
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// Where the segment files live: the file system, or a simulated disk in tests.
pub(crate) trait JournalIo: Send + Sync + 'static {
    /// The whole content of segment `index`, or `None` if it does not exist.
    fn read(&self, index: usize) -> io::Result<Option<Vec<u8>>>;
    /// Opens segment `index`, creating or resizing it to `size` bytes of zeros first (made
    /// durable, directory included) unless it already has that size.
    fn create(&self, index: usize, size: u64) -> io::Result<Box<dyn SegmentFile>>;
    /// The segment's path, for error messages.
    fn path(&self, index: usize) -> PathBuf;
}

/// Segment files `journal-0.wal` and `journal-1.wal` in a directory.
#[derive(Debug)]
pub(crate) struct FsJournal {
    dir: PathBuf,
}

impl FsJournal {
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }
}

struct FsSegment(File);

impl SegmentFile for FsSegment {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.write_all_at(data, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl JournalIo for FsJournal {
    fn read(&self, index: usize) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(index)) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create(&self, index: usize, size: u64) -> io::Result<Box<dyn SegmentFile>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(index);
        let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if file.metadata()?.len() != size {
            // Real zeros, not fallocate: see the module docs.
            file.set_len(0)?;
            let zeros = vec![0u8; 1 << 20];
            let mut offset = 0;
            while offset < size {
                let n = (size - offset).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], offset)?;
                offset += n;
            }
            file.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(Box::new(FsSegment(file)))
    }

    fn path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("journal-{index}.wal"))
    }
}

/// A journaled operation, as replay reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) ns: String,
    pub(crate) key: Vec<u8>,
    /// `None` for a remove.
    pub(crate) value: Option<Vec<u8>>,
}

/// Encoded size of an entry.
pub(crate) fn entry_len(ns: &str, key: &[u8], value: Option<&[u8]>) -> usize {
    HEADER_LEN + PAYLOAD_PREFIX + ns.len() + key.len() + value.map_or(0, <[u8]>::len)
}

/// Appends one encoded entry to `buf`. `ns` must be at most 255 bytes.
pub(crate) fn encode(buf: &mut Vec<u8>, epoch: u64, ns: &str, key: &[u8], value: Option<&[u8]>) {
    let start = buf.len();
    let payload_len = entry_len(ns, key, value) - HEADER_LEN;
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&epoch.to_le_bytes());
    buf.push(if value.is_some() { KIND_PUT } else { KIND_REMOVE });
    buf.push(ns.len() as u8);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(ns.as_bytes());
    buf.extend_from_slice(key);
    if let Some(value) = value {
        buf.extend_from_slice(value);
    }
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The valid prefix of a segment: its epoch (that of its first entry) and its entries, up to
/// the first entry that is torn, corrupt, or of another epoch.
pub(crate) fn decode_segment(data: &[u8]) -> Option<(u64, Vec<Entry>)> {
    let mut entries = Vec::new();
    let mut epoch = None;
    let mut offset = 0;
    while let Some((entry_epoch, entry, len)) = decode_entry(&data[offset..]) {
        if *epoch.get_or_insert(entry_epoch) != entry_epoch {
            break;
        }
        entries.push(entry);
        offset += len;
    }
    epoch.map(|epoch| (epoch, entries))
}

/// One entry at the start of `data`: its epoch, content and encoded length.
fn decode_entry(data: &[u8]) -> Option<(u64, Entry, usize)> {
    let header = data.get(..HEADER_LEN)?;
    let crc = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let payload_len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let epoch = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let total = HEADER_LEN.checked_add(payload_len)?;
    let body = data.get(4..total)?;
    if payload_len < PAYLOAD_PREFIX || crc32fast::hash(body) != crc {
        return None;
    }
    let payload = &data[HEADER_LEN..total];
    let kind = payload[0];
    let ns_len = usize::from(payload[1]);
    let key_len = u32::from_le_bytes(payload[2..6].try_into().ok()?) as usize;
    let rest = &payload[PAYLOAD_PREFIX..];
    let ns = std::str::from_utf8(rest.get(..ns_len)?).ok()?.to_owned();
    let key = rest.get(ns_len..ns_len.checked_add(key_len)?)?.to_vec();
    let value_bytes = &rest[ns_len + key_len..];
    let value = match kind {
        KIND_PUT => Some(value_bytes.to_vec()),
        KIND_REMOVE if value_bytes.is_empty() => None,
        _ => return None,
    };
    Some((epoch, Entry { ns, key, value }, total))
}

/// Bytes handed to the committer for one segment.
#[derive(Debug)]
struct Chunk {
    segment: usize,
    offset: u64,
    data: Vec<u8>,
}

#[derive(Debug)]
struct State {
    /// Segment that appends go to.
    active: usize,
    /// Epoch of the active segment's entries.
    epoch: u64,
    /// Offset in the active segment where `buf` goes (everything before it was handed to
    /// the committer).
    handed: u64,
    /// Encoded entries not yet handed to the committer.
    buf: Vec<u8>,
    /// The unwritten tail of the previous segment, left by a switch.
    sealed: Option<Chunk>,
    /// Segments whose entries are all in sled (checkpointed), so they may be overwritten.
    free: [bool; 2],
    /// Segments the committer is writing to right now.
    busy: [bool; 2],
    /// Somebody asked for a checkpoint (half-full or full segment).
    checkpoint_wanted: bool,
    /// The store is closing: the checkpointer exits.
    shutdown: bool,
    /// A checkpoint failed: appends fail instead of waiting for space.
    failed: bool,
}

impl State {
    /// Seals the active segment's unhanded entries and moves appends to the other segment
    /// with the next epoch. The other segment must be free.
    fn switch(&mut self) {
        let other = 1 - self.active;
        debug_assert!(self.free[other] && self.sealed.is_none());
        if !self.buf.is_empty() {
            self.sealed = Some(Chunk {
                segment: self.active,
                offset: self.handed,
                data: std::mem::take(&mut self.buf),
            });
        }
        self.active = other;
        self.epoch += 1;
        self.handed = 0;
        self.free[other] = false;
    }

    fn used(&self) -> u64 {
        self.handed + self.buf.len() as u64
    }
}

/// What a checkpoint must make durable in sled before the old segment may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    /// Every entry of an epoch `<=` this one is in sled.
    pub(crate) checkpointed: u64,
    /// The active epoch when the marker was written.
    pub(crate) floor: u64,
}

impl Marker {
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.checkpointed.to_le_bytes());
        out[8..].copy_from_slice(&self.floor.to_le_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(Self {
            checkpointed: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            floor: u64::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// The journal's shared state: appended to by writers, written by the committer, switched
/// and freed by the checkpointer.
pub(crate) struct Journal {
    state: Mutex<State>,
    /// Wakes writers waiting for a free segment and checkpoints waiting for the committer.
    space: Condvar,
    /// Wakes the checkpointer.
    wanted: Condvar,
    segments: [Box<dyn SegmentFile>; 2],
    paths: [PathBuf; 2],
    segment_size: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("paths", &self.paths).finish_non_exhaustive()
    }
}

impl Journal {
    /// A journal appending to segment 0 with `epoch`; both segments hold only checkpointed
    /// entries.
    pub(crate) fn new(io: &dyn JournalIo, segment_size: u64, epoch: u64) -> Result<Self> {
        let open =
            |i: usize| io.create(i, segment_size).map_err(|e| Error::io("create journal", io.path(i), e));
        Ok(Self {
            state: Mutex::new(State {
                active: 0,
                epoch,
                handed: 0,
                buf: Vec::with_capacity(64 * 1024),
                sealed: None,
                free: [false, true],
                busy: [false; 2],
                checkpoint_wanted: false,
                shutdown: false,
                failed: false,
            }),
            space: Condvar::new(),
            wanted: Condvar::new(),
            segments: [open(0)?, open(1)?],
            paths: [io.path(0), io.path(1)],
            segment_size,
        })
    }

    /// Appends one entry (`value: None` is a remove). Waits while both segments are in use
    /// (backpressure until the running checkpoint frees one).
    pub(crate) fn append(&self, ns: &str, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let len = entry_len(ns, key, value) as u64;
        if ns.len() > usize::from(u8::MAX) || u32::try_from(key.len()).is_err() || len > self.segment_size {
            return Err(Error::EntryTooLarge { len, limit: self.segment_size });
        }
        let mut state = self.state.lock();
        while state.used() + len > self.segment_size {
            if state.failed || state.shutdown {
                return Err(Error::Closed);
            }
            if state.free[1 - state.active] {
                state.switch();
            } else {
                state.checkpoint_wanted = true;
                self.wanted.notify_one();
                self.space.wait(&mut state);
            }
        }
        let epoch = state.epoch;
        encode(&mut state.buf, epoch, ns, key, value);
        if state.used() > self.segment_size / 2 && !state.checkpoint_wanted {
            state.checkpoint_wanted = true;
            self.wanted.notify_one();
        }
        Ok(())
    }

    /// Committer: writes every appended entry to its segment and `fdatasync`s it. `spare` is
    /// an empty buffer swapped with the append buffer (so appends reuse its capacity).
    pub(crate) fn write_pending(&self, spare: &mut Vec<u8>) -> Result<()> {
        let (sealed, active, offset) = {
            let mut state = self.state.lock();
            let sealed = state.sealed.take();
            std::mem::swap(&mut state.buf, spare);
            let offset = state.handed;
            state.handed += spare.len() as u64;
            if let Some(chunk) = &sealed {
                state.busy[chunk.segment] = true;
            }
            let active = state.active;
            if !spare.is_empty() {
                state.busy[active] = true;
            }
            (sealed, active, offset)
        };
        let mut result = Ok(());
        if let Some(chunk) = &sealed {
            result = self.write_sync(chunk.segment, chunk.offset, &chunk.data);
        }
        if result.is_ok() && !spare.is_empty() {
            result = self.write_sync(active, offset, spare);
        }
        spare.clear();
        let mut state = self.state.lock();
        state.busy = [false; 2];
        self.space.notify_all();
        result
    }

    fn write_sync(&self, segment: usize, offset: u64, data: &[u8]) -> Result<()> {
        let file = &self.segments[segment];
        let path = &self.paths[segment];
        file.write_at(offset, data).map_err(|e| Error::io("write journal", path, e))?;
        file.sync_data().map_err(|e| Error::io("fdatasync", path, e))
    }

    /// Checkpointer: switches segments (unless a full segment already did), runs `persist`
    /// (record the marker in sled, flush sled, fsync its files), then frees the old segment.
    /// Returns `false` without calling `persist` if nothing was appended since the last one.
    pub(crate) fn checkpoint(&self, persist: impl FnOnce(Marker) -> Result<()>) -> Result<bool> {
        let (old, marker) = {
            let mut state = self.state.lock();
            state.checkpoint_wanted = false;
            if state.free[1 - state.active] {
                if state.used() == 0 {
                    return Ok(false);
                }
                state.switch();
            }
            (1 - state.active, Marker { checkpointed: state.epoch - 1, floor: state.epoch })
        };
        if let Err(err) = persist(marker) {
            let mut state = self.state.lock();
            state.failed = true;
            self.space.notify_all();
            return Err(err);
        }
        let mut state = self.state.lock();
        while state.busy[old] {
            self.space.wait(&mut state);
        }
        // Not yet written by the committer: sled holds these entries now.
        if state.sealed.as_ref().is_some_and(|c| c.segment == old) {
            state.sealed = None;
        }
        state.free[old] = true;
        self.space.notify_all();
        Ok(true)
    }

    /// Checkpointer: waits until a checkpoint is wanted or `timeout` passed. Returns `false`
    /// once the journal is shutting down.
    pub(crate) fn wait_for_checkpoint(&self, timeout: std::time::Duration) -> bool {
        let mut state = self.state.lock();
        if !state.checkpoint_wanted && !state.shutdown {
            self.wanted.wait_for(&mut state, timeout);
        }
        !state.shutdown
    }

    /// Stops the checkpointer loop and wakes writers waiting for space (they fail).
    pub(crate) fn shut_down(&self) {
        let mut state = self.state.lock();
        state.shutdown = true;
        self.wanted.notify_all();
        self.space.notify_all();
    }

    /// Marks the journal failed (a checkpoint or commit failed): waiting writers give up.
    pub(crate) fn fail(&self) {
        let mut state = self.state.lock();
        state.failed = true;
        self.space.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    fn encoded(epoch: u64, entries: &[Op<'_>]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (ns, key, value) in entries {
            encode(&mut buf, epoch, ns, key, *value);
        }
        buf
    }

    type Decoded = (u64, Vec<Entry>);

    fn entry(ns: &str, key: &[u8], value: Option<&[u8]>) -> Entry {
        Entry { ns: ns.into(), key: key.to_vec(), value: value.map(<[u8]>::to_vec) }
    }

    #[test]
    fn round_trip_and_stops() {
        let a = ("ch", &b"k1"[..], Some(&b"v1"[..]));
        let b = ("meta", &b""[..], None);
        let c = ("ch", &b"k2"[..], Some(&[7u8; 300][..]));
        let good = encoded(5, &[a, b, c]);
        let all = vec![entry(a.0, a.1, a.2), entry(b.0, b.1, b.2), entry(c.0, c.1, c.2)];
        let len_ab = entry_len(a.0, a.1, a.2) + entry_len(b.0, b.1, b.2);

        let mut zero_tail = good.clone();
        zero_tail.extend_from_slice(&[0; 100]);
        let mut stale_tail = good.clone();
        stale_tail.extend(encoded(4, &[a]));
        let mut corrupt = good.clone();
        corrupt[len_ab + HEADER_LEN + 3] ^= 1;
        let torn = good[..good.len() - 1].to_vec();
        let mut bad_len = good.clone();
        bad_len[len_ab + 4] = 0xff;

        let cases: [(&str, Vec<u8>, Option<Decoded>); 8] = [
            ("all", good.clone(), Some((5, all.clone()))),
            ("zero tail", zero_tail, Some((5, all.clone()))),
            ("stale epoch tail", stale_tail, Some((5, all.clone()))),
            ("crc mismatch", corrupt, Some((5, all[..2].to_vec()))),
            ("torn last entry", torn, Some((5, all[..2].to_vec()))),
            ("length past end", bad_len, Some((5, all[..2].to_vec()))),
            ("zeros", vec![0; 4096], None),
            ("empty", Vec::new(), None),
        ];
        for (name, data, want) in cases {
            assert_eq!(decode_segment(&data), want, "{name}");
        }
    }

    #[test]
    fn every_prefix_decodes_to_whole_entries() {
        let entries: Vec<_> = (0u8..20).map(|i| ("n", vec![i], Some(vec![i; usize::from(i)]))).collect();
        let mut buf = Vec::new();
        let mut ends = vec![0];
        for (ns, key, value) in &entries {
            encode(&mut buf, 9, ns, key, value.as_deref());
            ends.push(buf.len());
        }
        for cut in 0..=buf.len() {
            let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
            let got = decode_segment(&buf[..cut]).map_or(0, |(_, e)| e.len());
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn marker_round_trip() {
        let m = Marker { checkpointed: 7, floor: 8 };
        assert_eq!(Marker::from_bytes(&m.to_bytes()), Some(m));
        assert_eq!(Marker::from_bytes(b"short"), None);
    }
}
