//! Power-cut tests of [`SledStore`]: the journal on a simulated disk that loses what was not
//! synced, sled rolled back to its last completed checkpoint (see [`crate::test_utils`]).

use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    KvStore, SledConfig, SledStore,
    journal::JournalIo,
    test_utils::{Image, Rng, SimDisk, copy_dir, open_simulated},
};

/// A temporary directory, on tmpfs when there is one (sled's fsyncs are then free).
pub(crate) fn fast_temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

/// One writer's operations on its own keys: `counter -> value` (`None`: removed).
#[derive(Debug, Default, Clone)]
struct History {
    /// Every operation issued per key, by global counter.
    issued: HashMap<Vec<u8>, Vec<(u64, Option<u64>)>>,
    /// Per key, the counter of the newest operation whose sync returned `Ok`.
    acked: HashMap<Vec<u8>, u64>,
}

const NS: &str = "vouchers";

/// Checks that every acknowledged operation survived: each key holds the result of its
/// acknowledged operation or of a later one of the same writer.
fn check(store: &SledStore, history: &History, label: &str) {
    let stored: HashMap<Vec<u8>, u64> = store
        .list(NS)
        .expect("list")
        .into_iter()
        .map(|(k, v)| (k, u64::from_be_bytes(v[..8].try_into().expect("value"))))
        .collect();
    for (key, ops) in &history.issued {
        let acked = history.acked.get(key).copied().unwrap_or(0);
        let now = stored.get(key).copied();
        let explained = ops.iter().any(|(counter, value)| *counter >= acked && *value == now)
            || (acked == 0 && now.is_none());
        let recent = &ops[ops.len().saturating_sub(6)..];
        assert!(
            explained,
            "{label}: key {key:?} holds {now:?}, acked counter {acked}, last issued {recent:?}"
        );
    }
    for key in stored.keys() {
        assert!(history.issued.contains_key(key), "{label}: key {key:?} was never written");
    }
}

/// Runs `rounds` lives of a store: open from the previous crash image, check, let `writers`
/// threads put/remove + sync for a random time, cut the power at a random moment.
fn run_cuts(seed: u64, rounds: usize, writers: usize, config: &SledConfig) {
    let dir = fast_temp_dir();
    let snapshot = dir.path().join("snapshot");
    let mut rng = Rng::new(seed);
    let mut image: Image = [None, None];
    let mut history = History::default();
    let counter = Arc::new(AtomicU64::new(1));
    let mut acked_total = 0usize;
    for round in 0..rounds {
        let label = format!("seed {seed} round {round}");
        let path = dir.path().join(format!("life-{round}"));
        if round > 0 {
            copy_dir(&snapshot, &path).expect("restore sled snapshot");
        }
        let disk = SimDisk::from_image(std::mem::take(&mut image));
        let store = open_simulated(&path, &snapshot, &disk, config).expect("open");
        check(&store, &history, &label);

        let stop = AtomicBool::new(false);
        let cut_after = Duration::from_micros(rng.below(15_000));
        let writer_seeds: Vec<u64> = (0..writers).map(|_| rng.next_u64()).collect();
        let results: Vec<History> = std::thread::scope(|s| {
            let handles: Vec<_> = writer_seeds
                .iter()
                .enumerate()
                .map(|(w, &wseed)| {
                    let (store, stop, counter) = (&store, &stop, &counter);
                    s.spawn(move || {
                        let mut rng = Rng::new(wseed);
                        let mut mine = History::default();
                        while !stop.load(Ordering::Relaxed) {
                            let key = vec![w as u8, rng.below(6) as u8];
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let value = (rng.below(8) != 0).then_some(n);
                            mine.issued.entry(key.clone()).or_default().push((n, value));
                            let applied = match value {
                                Some(v) => {
                                    let mut bytes = v.to_be_bytes().to_vec();
                                    bytes.resize(8 + rng.below(120) as usize, 0xab);
                                    store.put(NS, &key, &bytes)
                                }
                                None => store.remove(NS, &key),
                            };
                            if applied.is_err() {
                                break;
                            }
                            // Not every write is synced at once: unsynced ones ride on later syncs.
                            if rng.below(3) == 0 {
                                continue;
                            }
                            if store.sync_blocking().is_err() {
                                break;
                            }
                            // Everything this writer did so far is durable.
                            for (key, ops) in &mine.issued {
                                if let Some((last, _)) = ops.last() {
                                    mine.acked.insert(key.clone(), *last);
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            let started = Instant::now();
            while started.elapsed() < cut_after {
                std::thread::yield_now();
            }
            image = disk.cut(&mut rng);
            stop.store(true, Ordering::Relaxed);
            handles.into_iter().map(|h| h.join().expect("writer")).collect()
        });
        drop(store);
        for mine in results {
            for (key, ops) in mine.issued {
                history.issued.entry(key).or_default().extend(ops);
            }
            acked_total += mine.acked.len();
            history.acked.extend(mine.acked);
        }
        let _ = fs::remove_dir_all(&path);
    }
    // The final life: everything acknowledged is there.
    let path = dir.path().join("final");
    copy_dir(&snapshot, &path).expect("restore sled snapshot");
    let disk = SimDisk::from_image(image);
    let store = open_simulated(&path, &snapshot, &disk, config).expect("open");
    check(&store, &history, &format!("seed {seed} final"));
    assert!(
        acked_total > rounds,
        "seed {seed}: too few acknowledged writes ({acked_total}) to test anything"
    );
}

fn cut_config() -> SledConfig {
    SledConfig {
        flush_every_ms: 0,
        // Small segments: switches, reuse and backpressure happen within a few ms.
        journal_segment_bytes: 8 * 1024,
        checkpoint_every_ms: 3,
        commit_linger_us: 300,
        commit_batch_target: 4,
        ..SledConfig::default()
    }
}

#[test]
fn acknowledged_writes_survive_power_cuts() {
    let seed = std::env::var("X402_POWER_CUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x402);
    let rounds = std::env::var("X402_POWER_CUT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    run_cuts(seed, rounds, 6, &cut_config());
}

#[test]
fn acknowledged_writes_survive_power_cuts_large_segments() {
    // Default-like segments: cuts land mostly between checkpoints, with long replays.
    let config = SledConfig { journal_segment_bytes: 1 << 20, checkpoint_every_ms: 20, ..cut_config() };
    run_cuts(0x5eed, 60, 4, &config);
}

#[test]
fn simulated_disk_loses_only_unsynced_writes() {
    let disk = SimDisk::default();
    let file = disk.create(0, 4096).expect("create");
    file.write_at(0, &[1; 1000]).expect("write");
    file.sync_data().expect("sync");
    file.write_at(1000, &[2; 1000]).expect("write");
    let image = disk.cut(&mut Rng::new(1));
    let data = image[0].as_ref().expect("segment 0");
    assert_eq!(&data[..1000], &[1; 1000][..]);
    assert!(data[1000..2000].iter().all(|&b| b == 0 || b == 2));
    assert!(file.write_at(0, b"x").is_err());
    assert!(file.sync_data().is_err());
    assert_eq!(image[1], None);
}
