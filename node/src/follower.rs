//! The event follower: keeps the node's channel records current with the contract's events.
//!
//! Every poll it reads the logs of the `PaymentChannel` contract from its cursor (the last
//! block it processed as confirmed) to the chain head, and re-reads every channel those logs
//! touch that the node knows (or that was opened to this provider). Channel state is *read*,
//! never computed from event data, so processing a block twice is harmless and nothing can be
//! double-applied. What a read may be relied on follows
//! [`OnchainChannel::confirmed_view`](crate::channel::OnchainChannel::confirmed_view): exits
//! and closes count at once, top-ups only once `confirmations` blocks deep.
//!
//! Reorgs: channels touched in blocks above the confirmation depth are re-read on every poll
//! until their blocks are confirmed, so a shallow reorg corrects them at the next poll. The
//! cursor stores its block's hash; if that block is no longer canonical (a reorg deeper than
//! the confirmation depth), every channel the node knows is re-read. The cursor is kept in the
//! store, so a restarted node resumes where it stopped.

use std::{collections::BTreeSet, time::Duration};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256, U256},
    providers::Provider,
    rpc::types::{Filter, Log},
    sol_types::SolEvent,
};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use x402_protocol::bindings::IPaymentChannel::{self, ChannelParams};
use x402_store::KvStore;

use crate::{
    Engine, Refusal,
    chain::{ChainError, ChainReader, RpcChain},
    channel::ChannelStatus,
};

/// The store namespace of the follower's cursor.
pub const FOLLOWER: &str = "follower";
const CURSOR_KEY: &[u8] = b"cursor";
/// Channel reads in flight at once.
const READ_CONCURRENCY: usize = 16;

/// Errors of a follower poll.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The RPC failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Updating a channel record failed.
    #[error("{0}")]
    Node(#[from] Refusal),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] x402_store::Error),
    /// The stored cursor is corrupt.
    #[error("corrupt cursor: {0}")]
    Codec(#[from] serde_json::Error),
}

/// Follower settings.
#[derive(Clone, Debug)]
pub struct FollowerConfig {
    /// Time between polls.
    pub poll_interval: Duration,
    /// The most blocks asked for in one `eth_getLogs`.
    pub max_range: u64,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(1), max_range: 2_000 }
    }
}

/// Where the follower stands, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last block processed as confirmed.
    pub block: u64,
    /// Its hash, to detect a reorg below it.
    pub hash: B256,
    /// Channels touched in blocks above `block`: re-read until those blocks are confirmed.
    pub unconfirmed: Vec<B256>,
}

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The chain head seen.
    pub head: u64,
    /// The block now processed as confirmed.
    pub confirmed: u64,
    /// Channels re-read.
    pub channels_read: usize,
    /// Whether a reorg below the cursor was found (every known channel was re-read).
    pub reorg: bool,
}

/// Follows the contract's events into an [`Engine`].
#[derive(Debug)]
pub struct Follower<S> {
    engine: Engine<S, RpcChain>,
    config: FollowerConfig,
    cursor: Option<Cursor>,
    loaded: bool,
}

impl<S: KvStore> Follower<S> {
    /// A follower updating `engine`'s records.
    pub const fn new(engine: Engine<S, RpcChain>, config: FollowerConfig) -> Self {
        Self { engine, config, cursor: None, loaded: false }
    }

    /// The cursor, once loaded or advanced.
    pub const fn cursor(&self) -> Option<&Cursor> {
        self.cursor.as_ref()
    }

    /// Polls until `shutdown` resolves. Errors are logged and retried with backoff.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = self.config.poll_interval;
        loop {
            match self.poll_once().await {
                Ok(progress) => {
                    delay = self.config.poll_interval;
                    debug!(target: "node::follower", ?progress, "polled");
                }
                Err(e) => {
                    warn!(target: "node::follower", error = %e, retry_in = ?delay, "follower poll failed");
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One poll: reads new logs, re-reads the channels they touch, advances the cursor.
    pub async fn poll_once(&mut self) -> Result<Progress, FollowError> {
        if !self.loaded {
            self.cursor = load_cursor(self.engine.store().as_ref())?;
            self.loaded = true;
        }
        let chain = self.engine.chain();
        let provider = chain.provider();
        let head = provider.get_block_number().await.map_err(rpc)?;
        let safe = head.saturating_sub(chain.confirmations());
        let safe_hash = block_hash(provider, safe).await?.ok_or_else(|| rpc("confirmed block not found"))?;

        let mut touched = BTreeSet::new();
        let mut progress = Progress { head, confirmed: safe, ..Progress::default() };
        let from = match &self.cursor {
            Some(c) if c.block <= head && block_hash(provider, c.block).await? == Some(c.hash) => {
                touched.extend(c.unconfirmed.iter().copied());
                c.block + 1
            }
            previous => {
                if let Some(c) = previous {
                    warn!(target: "node::follower", cursor = c.block, %c.hash, head, "reorg below the confirmation depth; re-reading every channel");
                    progress.reorg = true;
                } else {
                    info!(target: "node::follower", head, safe, "no cursor yet; reading every known channel");
                }
                for record in self.engine.channels().await? {
                    if record.status != ChannelStatus::Closed {
                        touched.insert(record.id);
                    }
                }
                safe + 1
            }
        };

        let payee = self.engine.terms().payee;
        let mut adopt = BTreeSet::new();
        let mut unconfirmed = BTreeSet::new();
        let mut payments = std::collections::BTreeMap::new();
        let mut start = from;
        while start <= head {
            let end = head.min(start + self.config.max_range - 1);
            let filter = Filter::new().address(chain.contract()).from_block(start).to_block(end);
            let logs = provider.get_logs(&filter).await.map_err(rpc)?;
            for log in &logs {
                let Some(event) = ChannelEvent::parse(log, payee) else { continue };
                match event {
                    ChannelEvent::Channel { id, opened_to_us, params, paid } => {
                        if let Some((amount, closed)) = paid {
                            // A closed channel reads as zeroes: what it paid is in its event.
                            let fact = payments.entry(id).or_insert((U256::ZERO, false));
                            *fact = (fact.0.max(amount), fact.1 || closed);
                        }
                        if let Some(params) = params {
                            // Spares the channel's read a log lookup of its own.
                            chain.learn_params(id, params).await?;
                        }
                        if log.block_number.is_some_and(|b| b > safe) {
                            unconfirmed.insert(id);
                        }
                        if opened_to_us {
                            adopt.insert(id);
                        }
                        touched.insert(id);
                    }
                    ChannelEvent::Credited { token, amount } => warn!(
                        target: "node::follower",
                        %token,
                        amount = %amount,
                        "a payout to the provider failed and was credited; withdraw it with withdrawCredit"
                    ),
                }
            }
            start = end + 1;
        }

        // Only channels the node has a record of (or that were opened to it) are read.
        let mut ids = Vec::with_capacity(touched.len());
        for id in touched {
            if adopt.contains(&id) || self.engine.knows(id)? {
                ids.push(id);
            }
        }
        progress.channels_read = ids.len();
        let engine = &self.engine;
        let adopt = &adopt;
        let payments = &payments;
        futures::stream::iter(ids)
            .map(|id| async move {
                let view = engine.chain().channel(id).await?;
                engine.sync_channel(id, view, adopt.contains(&id)).await?;
                if let Some(&(paid, closed)) = payments.get(&id) {
                    engine.apply_paid(id, paid, closed, None).await?;
                }
                Ok::<_, FollowError>(())
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<()>()
            .await?;

        let cursor = Cursor { block: safe, hash: safe_hash, unconfirmed: unconfirmed.into_iter().collect() };
        let store = self.engine.store();
        store.put(FOLLOWER, CURSOR_KEY, &serde_json::to_vec(&cursor)?)?;
        // One durable write for the records and the cursor: a crash before it replays the
        // range, which is harmless because records are re-read, not incremented.
        store.sync().await?;
        let metrics = self.engine.metrics();
        metrics.follower_block.set(i64::try_from(safe).unwrap_or(i64::MAX));
        if progress.reorg {
            // Counted once handled: every channel has been re-read.
            metrics.reorgs.inc();
        }
        self.cursor = Some(cursor);
        Ok(progress)
    }
}

fn load_cursor(store: &impl KvStore) -> Result<Option<Cursor>, FollowError> {
    Ok(store.get(FOLLOWER, CURSOR_KEY)?.map(|b| serde_json::from_slice(&b)).transpose()?)
}

async fn block_hash(provider: &impl Provider, number: u64) -> Result<Option<B256>, ChainError> {
    let block = provider.get_block_by_number(BlockNumberOrTag::Number(number)).await.map_err(rpc)?;
    Ok(block.map(|b| b.header.hash))
}

fn rpc(e: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc(e.to_string())
}

/// The part of a contract event the follower acts on.
#[derive(Debug, PartialEq, Eq)]
enum ChannelEvent {
    /// Any event about one channel; a `ChannelOpened` carries its parameters, a `Settled`
    /// or `Closed` what the payee was paid in total (and whether it closed the channel).
    Channel { id: B256, opened_to_us: bool, params: Option<ChannelParams>, paid: Option<(U256, bool)> },
    /// A payout to the provider was credited instead of sent.
    Credited { token: Address, amount: U256 },
}

impl ChannelEvent {
    fn parse(log: &Log, payee: Address) -> Option<Self> {
        let topics = log.topics();
        let sig = *topics.first()?;
        let channel_events = [
            IPaymentChannel::ChannelOpened::SIGNATURE_HASH,
            IPaymentChannel::ToppedUp::SIGNATURE_HASH,
            IPaymentChannel::ExitRequested::SIGNATURE_HASH,
            IPaymentChannel::ExitCancelled::SIGNATURE_HASH,
            IPaymentChannel::Settled::SIGNATURE_HASH,
            IPaymentChannel::Closed::SIGNATURE_HASH,
            IPaymentChannel::ClaimSkipped::SIGNATURE_HASH,
        ];
        if channel_events.contains(&sig) {
            let id = *topics.get(1)?;
            let opened = (sig == IPaymentChannel::ChannelOpened::SIGNATURE_HASH)
                .then(|| log.log_decode::<IPaymentChannel::ChannelOpened>().ok())
                .flatten()
                .map(|opened| crate::chain::params_of(&opened.inner.data));
            let opened_to_us = opened.as_ref().is_some_and(|p| p.payee == payee);
            let paid = if sig == IPaymentChannel::Settled::SIGNATURE_HASH {
                log.log_decode::<IPaymentChannel::Settled>().ok().map(|e| (e.inner.data.paid, false))
            } else if sig == IPaymentChannel::Closed::SIGNATURE_HASH {
                log.log_decode::<IPaymentChannel::Closed>().ok().map(|e| (e.inner.data.paid, true))
            } else {
                None
            };
            return Some(Self::Channel { id, opened_to_us, params: opened, paid });
        }
        if sig == IPaymentChannel::PayoutCredited::SIGNATURE_HASH {
            let credited = log.log_decode::<IPaymentChannel::PayoutCredited>().ok()?;
            let event = credited.inner.data;
            return (event.account == payee)
                .then_some(Self::Credited { token: event.token, amount: event.amount });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use alloy::{primitives::LogData, sol_types::SolEvent};

    use super::*;

    fn log_of(event: &impl SolEvent) -> Log {
        Log {
            inner: alloy::primitives::Log { address: Address::ZERO, data: event.encode_log_data() },
            block_number: Some(1),
            ..Log::default()
        }
    }

    #[test]
    fn parses_the_events_the_node_acts_on() {
        let us = Address::repeat_byte(0xaa);
        let id = B256::repeat_byte(1);
        let opened = |payee| IPaymentChannel::ChannelOpened {
            channelId: id,
            payer: Address::repeat_byte(1),
            payee,
            token: Address::ZERO,
            signer: Address::ZERO,
            challengePeriod: 3600,
            salt: B256::ZERO,
            deposit: U256::from(5),
        };
        let params = |payee| ChannelParams {
            payer: Address::repeat_byte(1),
            payee,
            token: Address::ZERO,
            signer: Address::ZERO,
            challengePeriod: 3600,
            salt: B256::ZERO,
        };
        assert_eq!(
            ChannelEvent::parse(&log_of(&opened(us)), us),
            Some(ChannelEvent::Channel { id, opened_to_us: true, params: Some(params(us)), paid: None })
        );
        let other = Address::repeat_byte(2);
        assert_eq!(
            ChannelEvent::parse(&log_of(&opened(other)), us),
            Some(ChannelEvent::Channel { id, opened_to_us: false, params: Some(params(other)), paid: None })
        );
        let exit = IPaymentChannel::ExitRequested { channelId: id, exitAt: U256::from(9) };
        assert_eq!(
            ChannelEvent::parse(&log_of(&exit), us),
            Some(ChannelEvent::Channel { id, opened_to_us: false, params: None, paid: None })
        );
        let settled = IPaymentChannel::Settled {
            channelId: id,
            nonce: 4,
            paid: U256::from(10),
            payout: U256::from(10),
        };
        assert_eq!(
            ChannelEvent::parse(&log_of(&settled), us),
            Some(ChannelEvent::Channel {
                id,
                opened_to_us: false,
                params: None,
                paid: Some((U256::from(10), false))
            })
        );
        let closed = IPaymentChannel::Closed { channelId: id, paid: U256::from(12), refund: U256::from(3) };
        assert_eq!(
            ChannelEvent::parse(&log_of(&closed), us),
            Some(ChannelEvent::Channel {
                id,
                opened_to_us: false,
                params: None,
                paid: Some((U256::from(12), true))
            })
        );
        let credited = |account| IPaymentChannel::PayoutCredited {
            account,
            token: Address::repeat_byte(9),
            amount: U256::from(7),
        };
        assert_eq!(
            ChannelEvent::parse(&log_of(&credited(us)), us),
            Some(ChannelEvent::Credited { token: Address::repeat_byte(9), amount: U256::from(7) })
        );
        assert_eq!(ChannelEvent::parse(&log_of(&credited(Address::repeat_byte(1))), us), None);
        let unrelated = Log {
            inner: alloy::primitives::Log {
                address: Address::ZERO,
                data: LogData::new_unchecked(vec![B256::ZERO], Default::default()),
            },
            ..Log::default()
        };
        assert_eq!(ChannelEvent::parse(&unrelated, us), None);
    }
}
