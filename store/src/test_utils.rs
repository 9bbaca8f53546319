//! Test helpers: a simulated disk for the journal that loses what was not synced at a
//! power cut, and a [`SledStore`] on it whose sled directory is copied at the end of every
//! checkpoint (sled as a power cut would leave it). Behind the `test-utils` feature.
//!
//! The simulated disk keeps, per segment, the synced bytes and the writes since the last
//! `fdatasync`. A cut ([`SimDisk::cut`]) freezes it (later writes and syncs fail with EIO)
//! and builds the image a reboot would see: the synced bytes plus, for each unsynced write,
//! nothing, all of it, a prefix torn at an arbitrary byte, or an arbitrary subset of its
//! 512-byte sectors.
//!
//! A power-cut round: [`open_simulated`] (from the previous round's [`Image`] and sled
//! snapshot), write and sync concurrently, [`SimDisk::cut`], drop the store, restore the
//! snapshot with [`copy_dir`] into a fresh directory and open again from the image.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::Mutex;

use crate::{
    Error, Result, SledConfig, SledStore,
    journal::{JournalIo, SegmentFile},
    sled_store::Hooks,
};

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` if `n` is `0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Default)]
struct SimSegment {
    /// What survives a cut for sure.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Writes since the last sync, in order.
    unsynced: Vec<(usize, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct SimState {
    segments: [Option<SimSegment>; 2],
    cut: bool,
}

/// The simulated disk holding the journal's two segments.
#[derive(Debug, Clone, Default)]
pub struct SimDisk(Arc<Mutex<SimState>>);

/// What a reboot finds on the simulated disk.
pub type Image = [Option<Vec<u8>>; 2];

fn eio() -> io::Error {
    io::Error::other("power cut (simulated EIO)")
}

impl SimDisk {
    /// A disk holding `image` (both durable and readable), as found after a reboot.
    pub fn from_image(image: Image) -> Self {
        let [a, b] = image.map(|data| {
            data.map(|data| SimSegment { durable: data.clone(), current: data, unsynced: Vec::new() })
        });
        Self(Arc::new(Mutex::new(SimState { segments: [a, b], cut: false })))
    }

    /// Cuts the power: later I/O fails, and the returned image is what survived.
    pub fn cut(&self, rng: &mut Rng) -> Image {
        let mut state = self.0.lock();
        state.cut = true;
        state.segments.each_ref().map(|segment| {
            segment.as_ref().map(|segment| {
                let mut image = segment.durable.clone();
                for (offset, data) in &segment.unsynced {
                    let keep: Vec<(usize, usize)> = match rng.below(4) {
                        0 => Vec::new(),
                        1 => vec![(0, data.len())],
                        2 => vec![(0, rng.below(data.len() as u64 + 1) as usize)],
                        _ => (0..data.len())
                            .step_by(512)
                            .filter(|_| rng.below(2) == 0)
                            .map(|start| (start, (start + 512).min(data.len())))
                            .collect(),
                    };
                    for (start, end) in keep {
                        image[offset + start..offset + end].copy_from_slice(&data[start..end]);
                    }
                }
                image
            })
        })
    }

    /// Runs `f` unless the power was cut (atomically with respect to [`Self::cut`]).
    pub fn unless_cut(&self, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let state = self.0.lock();
        if state.cut {
            return Err(eio());
        }
        let result = f();
        drop(state);
        result
    }
}

struct SimFile {
    disk: SimDisk,
    index: usize,
}

impl SegmentFile for SimFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.disk.0.lock();
        if state.cut {
            return Err(eio());
        }
        let segment = state.segments[self.index].as_mut().ok_or_else(eio)?;
        let offset = offset as usize;
        let end = offset + data.len();
        if end > segment.current.len() {
            return Err(io::Error::other("write past the preallocated end"));
        }
        segment.current[offset..end].copy_from_slice(data);
        segment.unsynced.push((offset, data.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.disk.0.lock();
        if state.cut {
            return Err(eio());
        }
        let segment = state.segments[self.index].as_mut().ok_or_else(eio)?;
        for (offset, data) in std::mem::take(&mut segment.unsynced) {
            segment.durable[offset..offset + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
}

impl JournalIo for SimDisk {
    fn read(&self, index: usize) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().segments[index].as_ref().map(|s| s.current.clone()))
    }

    fn create(&self, index: usize, size: u64) -> io::Result<Box<dyn SegmentFile>> {
        let mut state = self.0.lock();
        let segment = state.segments[index].get_or_insert_with(SimSegment::default);
        if segment.current.len() as u64 != size {
            // Preallocation is synced (file and directory) before it is used.
            *segment = SimSegment {
                durable: vec![0; size as usize],
                current: vec![0; size as usize],
                unsynced: Vec::new(),
            };
        }
        Ok(Box::new(SimFile { disk: self.clone(), index }))
    }

    fn path(&self, index: usize) -> PathBuf {
        PathBuf::from(format!("sim/journal-{index}.wal"))
    }
}

/// Replaces `to` with a copy of directory `from`.
pub fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            match fs::copy(entry.path(), &target) {
                Ok(_) => {}
                // Garbage-collected by sled while we copy.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// A store on a simulated journal disk whose sled directory is copied to `snapshot` at the
/// end of every checkpoint (and once now, after open's own checkpoint).
pub fn open_simulated(
    path: &Path,
    snapshot: &Path,
    disk: &SimDisk,
    config: &SledConfig,
) -> Result<SledStore> {
    let hook_disk = disk.clone();
    let (hook_path, hook_snapshot) = (path.to_path_buf(), snapshot.to_path_buf());
    let hooks = Hooks {
        io: Some(Box::new(disk.clone())),
        after_checkpoint: Some(Box::new(move || {
            hook_disk
                .unless_cut(|| copy_dir(&hook_path, &hook_snapshot))
                .map_err(|e| Error::io("snapshot sled", &hook_path, e))
        })),
    };
    let store = SledStore::open_inner(path, config, hooks)?;
    copy_dir(path, snapshot).map_err(|e| Error::io("snapshot sled", path, e))?;
    Ok(store)
}
