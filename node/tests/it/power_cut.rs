//! Power cuts under the engine: vouchers served concurrently on several channels over a
//! [`SledStore`] whose journal is on a simulated disk (`x402_store::test_utils`), the power cut
//! at a random moment, the node restarted from what survived. Every voucher whose `commit`
//! returned `Ok` (whose response would have been released) must be in the book.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alloy::{
    primitives::{B256, U256},
    signers::local::PrivateKeySigner,
};
use x402_node::{Engine, Price, metrics::Metrics, test_utils::MemoryChain};
use x402_protocol::{
    ChannelDomain, Voucher,
    wire::{self, PaymentPayload},
};
use x402_store::{
    SledConfig,
    test_utils::{Image, Rng, SimDisk, copy_dir, open_simulated},
};

use crate::fixture::{CHAIN_ID, PRICE, onchain, terms};

const CHANNELS: usize = 6;
const ROUNDS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_vouchers_survive_power_cuts() {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("tempdir");
    let snapshot = dir.path().join("snapshot");
    let config = SledConfig {
        flush_every_ms: 0,
        journal_segment_bytes: 32 * 1024,
        checkpoint_every_ms: 4,
        commit_batch_target: 4,
        commit_linger_us: 300,
        ..SledConfig::default()
    };
    let chain = MemoryChain::default();
    let payers: Vec<PrivateKeySigner> = (0..CHANNELS).map(|_| PrivateKeySigner::random()).collect();
    let ids: Vec<B256> = (0..CHANNELS).map(|i| B256::repeat_byte(i as u8 + 1)).collect();
    for (id, payer) in ids.iter().zip(&payers) {
        chain.set(*id, onchain(payer.address(), 1_000_000_000 * PRICE));
    }
    let domain = ChannelDomain::new(CHAIN_ID, terms().contract);
    let price = Price::exact(U256::from(PRICE));
    // Per channel, the highest nonce whose commit returned Ok.
    let mut acked = [0u64; CHANNELS];
    let mut image: Image = [None, None];
    let mut rng = Rng::new(0x402);
    let mut committed_total = 0u64;
    for round in 0..=ROUNDS {
        let path = dir.path().join(format!("life-{round}"));
        if round > 0 {
            copy_dir(&snapshot, &path).expect("restore sled snapshot");
        }
        let disk = SimDisk::from_image(std::mem::take(&mut image));
        let store = Arc::new(open_simulated(&path, &snapshot, &disk, &config).expect("open"));
        let engine = Engine::new(terms(), Arc::clone(&store), chain.clone(), Metrics::new());
        let mut next = [0u64; CHANNELS];
        for (c, id) in ids.iter().enumerate() {
            let record = engine.channel(*id).expect("book");
            let latest = record.as_ref().and_then(|r| r.latest.as_ref()).map_or(0, |v| v.nonce);
            let charged = record.as_ref().map_or(U256::ZERO, |r| r.charged);
            assert!(
                latest >= acked[c],
                "round {round}: channel {c} lost committed voucher {} (book: {latest})",
                acked[c]
            );
            assert!(
                charged >= U256::from(acked[c] * PRICE),
                "round {round}: channel {c} lost charges ({charged})"
            );
            next[c] = latest + 1;
        }
        if round == ROUNDS {
            break;
        }

        let requirements = engine.requirements(&price, None);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CHANNELS)
            .map(|c| {
                let (engine, stop, price, domain) =
                    (engine.clone(), Arc::clone(&stop), price.clone(), domain.clone());
                let (payer, id, requirements) = (payers[c].clone(), ids[c], requirements.clone());
                let mut nonce = next[c];
                tokio::spawn(async move {
                    let mut last_ok = None;
                    while !stop.load(Ordering::Relaxed) {
                        let voucher =
                            Voucher { channelId: id, nonce, cumulativeAmount: U256::from(nonce * PRICE) };
                        let signed = domain.sign(&payer, voucher).expect("signs");
                        let header = wire::encode_header(&PaymentPayload::new(&requirements, &signed));
                        let Ok(pending) = engine.authorize(header.as_bytes(), &price).await else { break };
                        if pending.commit(U256::from(PRICE)).await.is_err() {
                            break;
                        }
                        last_ok = Some(nonce);
                        nonce += 1;
                    }
                    last_ok
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(rng.below(25_000))).await;
        image = disk.cut(&mut rng);
        stop.store(true, Ordering::Relaxed);
        for (c, task) in tasks.into_iter().enumerate() {
            if let Some(nonce) = task.await.expect("task") {
                committed_total += nonce - next[c] + 1;
                acked[c] = nonce;
            }
        }
        drop(engine);
        let store = Arc::into_inner(store).expect("last reference");
        tokio::task::spawn_blocking(move || drop(store)).await.expect("close");
    }
    assert!(committed_total > ROUNDS as u64, "too few commits ({committed_total}) to test anything");
}
