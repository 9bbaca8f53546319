//! Bytes per channel of a sled store of `N` channel records (default 1,000,000), the time
//! to reopen it and answer a first read, and the cost of encoding a record.
//!
//! `cargo run --release -p x402-node --example store_size -- <dir> [n]` (it deletes `<dir>`
//! first), with, in the environment:
//! - `SEGMENT_SIZE=<bytes>`: sled's segment size (default: the store's);
//! - `FLUSH_EVERY_MS=<ms>`: sled's background flush interval (default: the store's);
//! - `SYNC_EVERY=<n>`: sync after every `n` writes (default: once, at the end, as the
//!   benchmark's store is written);
//! - `UPDATES=<u>`: then serve `u` paid requests on random channels, synced by 64;
//! - `REOPEN_ONLY=1`: only time a restart of the store of an earlier run (in a new process).
//!
//! The records are what a paid channel of a busy node holds: random ids, payers and salts,
//! the node's payee and token, a 65-byte signature, a few vouchers served.

use std::{io::Write, path::Path, sync::Arc, time::Instant};

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use x402_node::{
    book::{self, ChannelBook},
    channel::ChannelRecord,
    test_utils::open_channel,
};
use x402_protocol::Voucher;
use x402_store::{KvStore, SledConfig, SledStore};

fn random(i: u64, what: &[u8]) -> B256 {
    keccak256([what, &i.to_be_bytes()].concat())
}

fn record(i: u64) -> ChannelRecord {
    let terms = x402_node::test_utils::terms(1);
    let mut chain =
        open_channel(&terms, Address::from_slice(&random(i, b"payer")[..20]), U256::from(10_000_000u64));
    chain.params.salt = random(i, b"salt");
    let mut record = ChannelRecord::new(random(i, b"id"), chain);
    record.settled_at = 1_764_000_000 + i % 1000;
    let price = 1_000u64;
    for n in 1..=(1 + i % 20) {
        let v = Voucher { channelId: record.id, nonce: n, cumulativeAmount: U256::from(n * price) };
        let mut sig = random(i ^ n, b"sig").to_vec();
        sig.extend_from_slice(random(i ^ n, b"sig2").as_slice());
        sig.push(27);
        record.apply(&v, Bytes::from(sig), U256::from(price));
    }
    record
}

fn du(dir: &Path) -> (u64, u64) {
    let mut apparent = 0;
    let mut allocated = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            let (a, b) = du(&e.path());
            apparent += a;
            allocated += b;
        } else {
            apparent += m.len();
            allocated += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
        }
    }
    (apparent, allocated)
}

fn main() -> eyre::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir =
        std::path::PathBuf::from(args.next().ok_or_else(|| eyre::eyre!("usage: store_size <dir> [n]"))?);
    let n: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let mut config = SledConfig::default();
    if let Ok(s) = std::env::var("SEGMENT_SIZE") {
        config.segment_size_bytes = s.parse()?;
    }
    if let Ok(s) = std::env::var("FLUSH_EVERY_MS") {
        config.flush_every_ms = s.parse()?;
    }
    let sync_every: u64 = std::env::var("SYNC_EVERY").map_or(Ok(0), |s| s.parse())?;
    // `REOPEN_ONLY=1`: time the restart of a store written by an earlier run.
    if std::env::var_os("REOPEN_ONLY").is_none() {
        let _ = std::fs::remove_dir_all(&dir);

        let sample = record(7);
        let dictionary = [sample.chain.params.payee, sample.chain.params.token];
        let started = Instant::now();
        let mut len = 0;
        for _ in 0..1_000_000 {
            len += std::hint::black_box(book::encode_with(std::hint::black_box(&sample), &dictionary)).len();
        }
        let encode_ns = started.elapsed().as_nanos() as f64 / 1e6;
        writeln!(std::io::stdout(), "record: {} bytes, encode {encode_ns:.0} ns", len / 1_000_000)?;

        let started = Instant::now();
        {
            let book = ChannelBook::new(Arc::new(SledStore::open_with(&dir, config.clone())?));
            for i in 0..n {
                book.put(&record(i))?;
                if sync_every > 0 && i % sync_every == sync_every - 1 {
                    book.store().sync_blocking()?;
                }
            }
            book.store().sync_blocking()?;
        }
        let write_s = started.elapsed().as_secs_f64();
        let (apparent, allocated) = du(&dir);
        writeln!(
            std::io::stdout(),
            "{n} channels written in {write_s:.1} s: {:.0} bytes per channel ({:.0} allocated)",
            apparent as f64 / n as f64,
            allocated as f64 / n as f64
        )?;
    }
    let started = Instant::now();
    let book = ChannelBook::new(Arc::new(SledStore::open_with(&dir, config)?));
    let got = book.get(random(n / 2, b"id"))?;
    let reopen_ms = started.elapsed().as_secs_f64() * 1e3;
    eyre::ensure!(got == Some(record(n / 2)), "the record read back differs");
    writeln!(std::io::stdout(), "reopen + first get: {reopen_ms:.0} ms")?;
    // `UPDATES=<u>`: u paid requests on random channels (one more voucher each), synced in
    // groups of 64 as under load: their time and the process's CPU per write, and the disk after.
    let updates: u64 = std::env::var("UPDATES").map_or(Ok(0), |s| s.parse())?;
    if updates > 0 {
        let (started, cpu) = (Instant::now(), cpu_seconds());
        for u in 0..updates {
            let i = u64::from_be_bytes(random(u, b"pick")[..8].try_into()?) % n;
            let mut record = book.get(random(i, b"id"))?.ok_or_else(|| eyre::eyre!("channel {i} missing"))?;
            let v = Voucher {
                channelId: record.id,
                nonce: record.nonce() + 1,
                cumulativeAmount: record.charged + U256::from(1000),
            };
            record.apply(&v, Bytes::from(vec![0x5a; 65]), U256::from(1000));
            book.put(&record)?;
            if u % 64 == 63 {
                book.store().sync_blocking()?;
            }
        }
        book.store().sync_blocking()?;
        let per = |s: f64| s * 1e6 / updates as f64;
        let (apparent, _) = du(&dir);
        writeln!(
            std::io::stdout(),
            "{updates} updates: {:.1} us each, {:.1} us of CPU; then {:.0} bytes per channel",
            per(started.elapsed().as_secs_f64()),
            per(cpu_seconds() - cpu),
            apparent as f64 / n as f64
        )?;
    }
    let started = Instant::now();
    drop(book);
    writeln!(std::io::stdout(), "drop: {:.0} ms", started.elapsed().as_secs_f64() * 1e3)?;
    Ok(())
}

/// The process's user and system CPU time so far (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |s| s.1).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, 11 and 12 after the command name; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}
