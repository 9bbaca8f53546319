//! Pushes the node's latest vouchers to watchtowers, so that a watcher can defend the
//! provider's payments while the node is down.
//!
//! The engine's [`VoucherFeed`](crate::engine::VoucherFeed) records which channels got a new
//! durable voucher. Each configured watcher gets the latest voucher of every such channel, with
//! the channel's parameters and a `ClaimAuthorization` the provider's key signs at what the
//! node charged (not the voucher's ceiling: a watcher can claim exactly that, never more), once
//! `every` new vouchers were stored, or `interval_secs` after the first unpushed one, whichever
//! comes first. A push that fails is retried with the next one; nothing is dropped, and a
//! watcher keeps only the best voucher per channel, so pushing one twice is harmless.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use alloy::{primitives::B256, signers::local::PrivateKeySigner};
use tracing::{debug, warn};
use x402_protocol::{
    claim,
    watch::{MAX_VOUCHERS_PER_REQUEST, WATCH_PATH, WatchRequest, WatchResponse, WatchedVoucher},
};
use x402_store::KvStore;

use crate::{Engine, Error, chain::ChainReader, config::WatcherTarget};

/// One watcher and the channels it has not been sent yet.
#[derive(Debug)]
struct Target {
    config: WatcherTarget,
    pending: HashSet<B256>,
    pushed_count: u64,
    oldest: Option<Instant>,
}

/// Pushes vouchers to `watchers`, their claims authorised with `payee` (the provider's key),
/// until the task is dropped. Call [`VoucherFeed::enable`](crate::engine::VoucherFeed::enable)
/// first.
pub async fn run<S: KvStore, C: ChainReader>(
    engine: Engine<S, C>,
    payee: PrivateKeySigner,
    watchers: Vec<WatcherTarget>,
) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let mut targets: Vec<Target> = watchers
        .into_iter()
        .map(|config| Target { config, pending: HashSet::new(), pushed_count: 0, oldest: None })
        .collect();
    let tick = targets.iter().map(|t| t.config.interval_secs).min().unwrap_or(5).max(1);
    let feed = engine.voucher_feed();
    loop {
        tokio::select! {
            () = feed.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(tick)) => {}
        }
        let changed = feed.drain();
        let count = feed.count();
        for target in &mut targets {
            if !changed.is_empty() && target.oldest.is_none() {
                target.oldest = Some(Instant::now());
            }
            target.pending.extend(changed.iter().copied());
            let due_by_count = count.saturating_sub(target.pushed_count) >= target.config.every;
            let due_by_time = target
                .oldest
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(target.config.interval_secs));
            if target.pending.is_empty() || !(due_by_count || due_by_time) {
                continue;
            }
            match push(&engine, &payee, &client, &target.config, &target.pending).await {
                Ok(sent) => {
                    debug!(target: "node::push", watcher = %target.config.url, sent, "vouchers pushed");
                    target.pending.clear();
                    target.pushed_count = count;
                    target.oldest = None;
                }
                Err(e) => {
                    warn!(target: "node::push", error = %e, pending = target.pending.len(), "push failed; will retry")
                }
            }
        }
    }
}

/// Sends the latest voucher of each of `channels` that owes anything to one watcher, with a
/// claim of what the node charged authorised by `payee`.
pub async fn push<S: KvStore, C: ChainReader>(
    engine: &Engine<S, C>,
    payee: &PrivateKeySigner,
    client: &reqwest::Client,
    watcher: &WatcherTarget,
    channels: &HashSet<B256>,
) -> Result<usize, Error> {
    let err = |message: String| Error::Watcher { url: watcher.url.clone(), message };
    let mut vouchers = Vec::with_capacity(channels.len());
    for id in channels {
        let Some(record) = engine.channel(*id).map_err(|e| err(e.to_string()))? else { continue };
        let Some(v) = record.claimable() else { continue };
        let claimed = record.charged();
        let payee_signature = claim::sign(engine.domain(), payee, *id, v.nonce, claimed)
            .map_err(|e| err(format!("cannot sign the claim authorisation: {e}")))?;
        vouchers.push(WatchedVoucher {
            channel_id: *id,
            nonce: v.nonce,
            cumulative_amount: v.cumulative_amount,
            signature: v.signature.clone(),
            claimed,
            payee_signature,
            params: record.chain.params.clone(),
        });
    }
    let url = format!("{}{WATCH_PATH}", watcher.url.trim_end_matches('/'));
    for chunk in vouchers.chunks(MAX_VOUCHERS_PER_REQUEST) {
        let resp = client
            .post(&url)
            .bearer_auth(&watcher.token)
            .json(&WatchRequest { vouchers: chunk.to_vec() })
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!("answered {status}")));
        }
        let answer: WatchResponse = resp.json().await.map_err(|e| err(format!("bad answer: {e}")))?;
        for rejected in answer.rejected() {
            warn!(target: "node::push", watcher = %watcher.url, channel = %rejected.channel_id, result = ?rejected.outcome, "watcher rejected a voucher");
        }
    }
    Ok(vouchers.len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use alloy::primitives::{Address, Bytes, U256};
    use axum::{Json, Router, http::HeaderMap, routing::post};
    use x402_protocol::ChannelDomain;
    use x402_protocol::watch::{WatchOutcome, WatchResult};
    use x402_store::MemoryStore;

    use super::*;
    use crate::{
        Terms,
        channel::{ChannelRecord, StoredVoucher},
        metrics::Metrics,
        test_utils::MemoryChain,
    };

    const TOKEN: &str = "push-test-token-0123456789";

    /// A watcher stub that takes pushes with `TOKEN` and remembers them.
    async fn stub() -> (String, Arc<parking_lot::Mutex<Vec<WatchedVoucher>>>) {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let app = Router::new().route(
            WATCH_PATH,
            post(move |headers: HeaderMap, Json(req): Json<WatchRequest>| async move {
                if !crate::auth::BearerToken::new(TOKEN).authorizes(&headers) {
                    return Err(axum::http::StatusCode::UNAUTHORIZED);
                }
                let results = req
                    .vouchers
                    .iter()
                    .map(|v| WatchResult {
                        channel_id: v.channel_id,
                        nonce: v.nonce,
                        cumulative_amount: v.cumulative_amount,
                        outcome: WatchOutcome::Stored,
                    })
                    .collect();
                seen2.lock().extend(req.vouchers);
                Ok(Json(WatchResponse { results }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn pushes_the_latest_voucher_and_reports_failures() {
        let store = Arc::new(MemoryStore::new());
        let terms = Terms {
            chain_id: 1,
            contract: Address::repeat_byte(1),
            payee: Address::repeat_byte(2),
            asset: Address::ZERO,
            min_challenge_period: 0,
            min_deposit: U256::ZERO,
            max_timeout_seconds: 1,
            accept_contract_signers: false,
        };
        let engine = Engine::new(terms, Arc::clone(&store), MemoryChain::default(), Metrics::new());
        let id = B256::repeat_byte(7);
        let mut record = ChannelRecord::new(id, crate::channel::tests::onchain(1000));
        let latest = StoredVoucher {
            nonce: 4,
            cumulative_amount: U256::from(40),
            signature: Bytes::from(vec![1; 65]),
        };
        record.latest = Some(latest.clone());
        record.charged = U256::from(30);
        engine.book().put(&record).unwrap();
        // A channel without a voucher sends nothing.
        let empty = B256::repeat_byte(8);
        let bare = ChannelRecord::new(empty, crate::channel::tests::onchain(1000));
        engine.book().put(&bare).unwrap();

        let (url, seen) = stub().await;
        let client = reqwest::Client::new();
        let channels: HashSet<B256> = [id, empty].into();
        let target = |url: &str, token: &str| WatcherTarget {
            url: url.into(),
            token: token.into(),
            every: 1,
            interval_secs: 1,
        };

        let payee = alloy::signers::local::PrivateKeySigner::random();
        let wrong = push(&engine, &payee, &client, &target(&url, "wrong-token-0123456789"), &channels).await;
        assert!(
            matches!(&wrong, Err(Error::Watcher { message, .. }) if message.contains("401")),
            "{wrong:?}"
        );
        assert!(seen.lock().is_empty());
        let down = push(&engine, &payee, &client, &target("http://127.0.0.1:9", TOKEN), &channels).await;
        assert!(down.is_err());

        assert_eq!(push(&engine, &payee, &client, &target(&url, TOKEN), &channels).await.unwrap(), 1);
        let seen = seen.lock();
        assert_eq!(seen.len(), 1);
        let pushed = &seen[0];
        assert_eq!((pushed.channel_id, pushed.nonce, pushed.cumulative_amount), (id, 4, U256::from(40)));
        assert_eq!(pushed.signature, latest.signature);
        assert_eq!(pushed.params, record.chain.params);
        // The claim is of what was charged (30), not the voucher's ceiling (40), signed by the payee.
        assert_eq!(pushed.claimed, U256::from(30));
        let digest = claim::digest(&ChannelDomain::new(1, Address::repeat_byte(1)), id, 4, U256::from(30));
        let signer = alloy::primitives::Signature::from_raw(&pushed.payee_signature)
            .unwrap()
            .recover_address_from_prehash(&digest)
            .unwrap();
        assert_eq!(signer, payee.address());
    }
}
