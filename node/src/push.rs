//! Pushes the node's latest vouchers to watchtowers, so that a watcher can defend the
//! provider's payments while the node is down.
//!
//! The engine's [`VoucherFeed`](crate::engine::VoucherFeed) records which channels got a new
//! durable voucher. Each configured watcher gets the latest voucher of every such channel once
//! `every` new vouchers were stored, or `interval_secs` after the first unpushed one, whichever
//! comes first. A push that fails is retried with the next one; nothing is dropped, and a
//! watcher keeps only the best voucher per channel, so pushing one twice is harmless.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use alloy::primitives::B256;
use tracing::{debug, warn};
use x402_protocol::watch::{
    MAX_VOUCHERS_PER_REQUEST, WATCH_PATH, WatchRequest, WatchResponse, WatchedVoucher,
};
use x402_store::KvStore;

use crate::{Engine, chain::ChainReader, config::WatcherTarget};

/// Errors pushing to a watcher.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The watcher could not be reached or answered with an error.
    #[error("watcher {url}: {message}")]
    Watcher {
        /// The watcher.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// One watcher and the channels it has not been sent yet.
#[derive(Debug)]
struct Target {
    config: WatcherTarget,
    pending: HashSet<B256>,
    pushed_count: u64,
    oldest: Option<Instant>,
}

/// Pushes vouchers to `watchers` until the task is dropped. Call
/// [`VoucherFeed::enable`](crate::engine::VoucherFeed::enable) first.
pub async fn run<S: KvStore, C: ChainReader>(engine: Engine<S, C>, watchers: Vec<WatcherTarget>) {
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
            match push(&engine, &client, &target.config, &target.pending).await {
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

/// Sends the latest voucher of each of `channels` to one watcher.
pub async fn push<S: KvStore, C: ChainReader>(
    engine: &Engine<S, C>,
    client: &reqwest::Client,
    watcher: &WatcherTarget,
    channels: &HashSet<B256>,
) -> Result<usize, PushError> {
    let err = |message: String| PushError::Watcher { url: watcher.url.clone(), message };
    let mut vouchers = Vec::with_capacity(channels.len());
    for id in channels {
        let record = engine.channel(*id).map_err(|e| err(e.to_string()))?;
        if let Some(v) = record.as_ref().and_then(|r| r.latest.as_ref()) {
            vouchers.push(WatchedVoucher {
                channel_id: *id,
                nonce: v.nonce,
                cumulative_amount: v.cumulative_amount,
                signature: v.signature.clone(),
            });
        }
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
