//! Durable writes per second: N concurrent writers, each doing put + sync of a
//! 200-byte value against a [`SledStore`] (on the target dir's disk, not tmpfs).
//!
//! Criterion's `thrpt` line is durable writes per second; after each case the
//! group-commit counters are printed to stderr.

// `criterion_group!` generates an undocumented pub fn.
#![allow(missing_docs)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use x402_store::{KvStore, SledStore};

const WRITERS: [u64; 3] = [1, 16, 256];

fn durable_write(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path().join("bench-db")).expect("open"));
    let value = [0xab_u8; 200];

    let mut group = c.benchmark_group("durable_write");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for writers in WRITERS {
        let before = store.stats();
        group.throughput(Throughput::Elements(writers));
        group.bench_with_input(BenchmarkId::new("writers", writers), &writers, |b, &writers| {
            // One iteration = every writer does one put + sync, concurrently.
            b.iter_custom(|iters| {
                let started = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..writers)
                        .map(|writer| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                for i in 0..iters {
                                    let key = [writer.to_be_bytes(), i.to_be_bytes()].concat();
                                    store.put("vouchers", &key, &value).expect("put");
                                    store.sync().await.expect("sync");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("writer task");
                    }
                });
                started.elapsed()
            });
        });
        let after = store.stats();
        let flushes = after.flushes - before.flushes;
        let writes = after.synced_writes - before.synced_writes;
        #[allow(clippy::print_stderr)] // bench report, next to criterion's own output
        {
            eprintln!(
                "durable_write/writers/{writers}: {writes} durable writes in {flushes} flushes \
                 ({:.1} writes/flush, max batch so far {})",
                writes as f64 / flushes.max(1) as f64,
                after.max_batch
            );
        }
    }
    group.finish();
}

criterion_group!(benches, durable_write);
criterion_main!(benches);
