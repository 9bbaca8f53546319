//! The event follower: keeps the node's channel records current with the contract's events.
//!
//! The chain is followed by the shared [`LogFollower`] of `x402-chain` (confirmations,
//! reorg rollback, the cursor in the store); this module is what the node does with the logs
//! ([`NodeLogs`]). Every poll re-reads every channel the new logs touch that the node knows
//! (or that was opened to this provider). Channel state is *read*, never computed from event
//! data, so processing a block twice is harmless and nothing can be double-applied. What a
//! read may be relied on follows
//! [`OnchainChannel::confirmed_view`](crate::channel::OnchainChannel::confirmed_view): exits
//! and closes count at once, top-ups only once `confirmations` blocks deep.
//!
//! Reorgs: logs of blocks above the confirmation depth are delivered again on every poll
//! until their blocks are confirmed, so the channels they touch are re-read and a shallow
//! reorg is corrected at the next poll. A reorg below the cursor makes the follower resync:
//! every channel the node knows is re-read. The cursor is kept in the store, so a restarted
//! node resumes where it stopped.

use std::collections::{BTreeMap, BTreeSet};

use alloy::{
    primitives::{Address, B256, U256},
    rpc::types::Log,
    sol_types::SolEvent,
};
use futures::{StreamExt, TryStreamExt};
use tracing::warn;
pub use x402_chain::follower::{Cursor, FollowerConfig, Progress};
use x402_chain::follower::{LogFollower, LogHandler, Range};
use x402_protocol::bindings::IPaymentChannel::{self, ChannelParams};
use x402_store::KvStore;

use crate::{
    Engine, Error,
    chain::{ChainReader, RpcChain},
    channel::ChannelStatus,
};

/// The store namespace of the follower's cursor.
pub const FOLLOWER: &str = x402_chain::follower::CURSORS;
/// The cursor's key in it.
const CURSOR_NAME: &str = "cursor";
/// Channel reads in flight at once.
const READ_CONCURRENCY: usize = 16;

/// Follows the contract's events into an [`Engine`].
#[derive(Debug)]
pub struct Follower<S: KvStore> {
    inner: LogFollower<S, NodeLogs<S>>,
}

impl<S: KvStore> Follower<S> {
    /// A follower updating `engine`'s records; confirmations are the chain reader's.
    pub fn new(engine: Engine<S, RpcChain>, config: FollowerConfig) -> Self {
        let config = FollowerConfig { confirmations: engine.chain().confirmations(), ..config };
        let inner = LogFollower::new(
            engine.chain().provider().clone(),
            engine.chain().contract(),
            std::sync::Arc::clone(engine.store()),
            CURSOR_NAME,
            config,
            NodeLogs {
                engine,
                touched: BTreeSet::new(),
                adopt: BTreeSet::new(),
                payments: BTreeMap::new(),
                read: 0,
            },
        );
        Self { inner }
    }

    /// The cursor, once loaded or advanced.
    pub const fn cursor(&self) -> Option<&Cursor> {
        self.inner.cursor()
    }

    /// Polls until `shutdown` resolves. Errors are logged and retried with backoff.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = self.inner.config().poll_interval;
        loop {
            match self.poll_once().await {
                Ok(_) => delay = self.inner.config().poll_interval,
                Err(e) => {
                    warn!(target: "node::follower", error = %e, retry_in = ?delay, "follower poll failed");
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One poll: reads new logs, re-reads the channels they touch, advances the cursor.
    pub async fn poll_once(&mut self) -> Result<Progress, Error> {
        let progress = self.inner.poll_once().await?;
        let metrics = self.inner.handler().engine.metrics();
        metrics.follower_block.set(i64::try_from(progress.confirmed).unwrap_or(i64::MAX));
        if progress.reorg {
            // Counted once handled: every channel has been re-read.
            metrics.reorgs.inc();
        }
        Ok(progress)
    }

    /// Channels re-read by the last poll.
    pub const fn channels_read(&self) -> usize {
        self.inner.handler().read
    }
}

/// What the node does with the contract's logs: re-reads the channels they touch.
#[derive(Debug)]
pub struct NodeLogs<S> {
    engine: Engine<S, RpcChain>,
    /// Channels to re-read at the end of the poll.
    touched: BTreeSet<B256>,
    /// Channels opened to this provider: adopted even if the node has no record yet.
    adopt: BTreeSet<B256>,
    /// What the payee was paid in total per channel, from `Settled` and `Closed` events (a
    /// closed channel reads as zeroes), and whether it closed.
    payments: BTreeMap<B256, (U256, bool)>,
    /// Channels re-read by the last poll.
    read: usize,
}

impl<S: KvStore> LogHandler for NodeLogs<S> {
    type Error = Error;

    async fn resync(&mut self, _reorg: bool) -> Result<(), Error> {
        for record in self.engine.channels().await? {
            if record.status != ChannelStatus::Closed {
                self.touched.insert(record.id);
            }
        }
        Ok(())
    }

    async fn logs(&mut self, logs: Vec<Log>, _range: Range) -> Result<(), Error> {
        let payee = self.engine.terms().payee;
        for log in &logs {
            let Some(event) = ChannelEvent::parse(log, payee) else { continue };
            match event {
                ChannelEvent::Channel { id, opened_to_us, params, paid } => {
                    if let Some((amount, closed)) = paid {
                        // A closed channel reads as zeroes: what it paid is in its event.
                        let fact = self.payments.entry(id).or_insert((U256::ZERO, false));
                        *fact = (fact.0.max(amount), fact.1 || closed);
                    }
                    if let Some(params) = params {
                        // Spares the channel's read a log lookup of its own.
                        self.engine.chain().learn_params(id, params).await?;
                    }
                    if opened_to_us {
                        self.adopt.insert(id);
                    }
                    self.touched.insert(id);
                }
                ChannelEvent::Credited { token, amount } => warn!(
                    target: "node::follower",
                    %token,
                    amount = %amount,
                    "a payout to the provider failed and was credited; withdraw it with withdrawCredit"
                ),
            }
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), Error> {
        let touched = std::mem::take(&mut self.touched);
        let adopt = std::mem::take(&mut self.adopt);
        let payments = std::mem::take(&mut self.payments);
        // Only channels the node has a record of (or that were opened to it) are read.
        let mut ids = Vec::with_capacity(touched.len());
        for id in touched {
            if adopt.contains(&id) || self.engine.knows(id)? {
                ids.push(id);
            }
        }
        self.read = ids.len();
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
                Ok::<_, Error>(())
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<()>()
            .await
    }
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
