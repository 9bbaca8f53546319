//! The chain follower: delivers a contract's logs to a [`LogHandler`], with confirmations and
//! reorg rollback, from a cursor kept in the store.
//!
//! Every poll reads the head, takes `head - confirmations` as the confirmed block, and
//! delivers the logs from the cursor (the last confirmed block already processed) to the
//! head, in ranges of at most `max_range` blocks (halved while the RPC refuses a range, grown
//! back after). Logs of blocks above the confirmed one are delivered again on every poll until
//! they are confirmed, so a handler that derives its state from what the chain says *now*
//! (re-reading what a log names, never incrementing) is corrected by the next poll after a
//! shallow reorg.
//!
//! The cursor stores its block's hash. If that block is no longer canonical (a reorg deeper
//! than the confirmation depth) or the chain is shorter than the cursor, the handler is told
//! to [`resync`](LogHandler::resync) (re-read everything it keeps) and following resumes from
//! the confirmed block. So it is on the first poll, with no cursor yet.
//!
//! A long backlog (a process down for days) is caught up over several polls of at most
//! `max_requests` ranges each, so that the handler's own work (e.g. settling exits it already
//! knows of) is never held up behind it.
//!
//! Tracing target: `chain::follower`.

use std::{future::Future, sync::Arc, time::Duration};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
    rpc::types::{Filter, Log},
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use x402_store::KvStore;

use crate::error::{ChainError, rpc};

/// The store namespace of followers' cursors, keyed by the follower's name.
pub const CURSORS: &str = "follower";

/// What a follower does with the logs it reads.
pub trait LogHandler: Send {
    /// The handler's error; a failed poll is retried from the same cursor.
    type Error: From<ChainError> + std::fmt::Display + Send;

    /// Re-reads everything the handler keeps: there is no cursor yet (`reorg` false), or a
    /// reorg went below it (`reorg` true).
    fn resync(&mut self, reorg: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The logs of blocks `range.from..=range.to`, in chain order. Those of blocks above
    /// `range.confirmed` are delivered again on later polls until confirmed.
    fn logs(&mut self, logs: Vec<Log>, range: Range) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The poll's logs are all delivered: make what the handler wrote durable (the cursor is
    /// stored right after, in the same store sync).
    fn commit(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// A block range delivered to a [`LogHandler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// The first block.
    pub from: u64,
    /// The last block.
    pub to: u64,
    /// The last confirmed block of this poll.
    pub confirmed: u64,
}

/// Follower settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerConfig {
    /// Time between polls.
    pub poll_interval: Duration,
    /// The most blocks asked for in one `eth_getLogs`.
    pub max_range: u64,
    /// The most `eth_getLogs` calls in one poll.
    pub max_requests: usize,
    /// How deep a block must be before it counts as confirmed.
    pub confirmations: u64,
}

impl FollowerConfig {
    /// The defaults: polls every second, 2,000-block ranges, at most 64 of them a poll,
    /// no confirmations.
    pub const DEFAULT: Self =
        Self { poll_interval: Duration::from_secs(1), max_range: 2_000, max_requests: 64, confirmations: 0 };
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where a follower stands, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last confirmed block processed.
    pub block: u64,
    /// Its hash, to detect a reorg below it.
    pub hash: B256,
}

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The chain head seen.
    pub head: u64,
    /// The confirmed block now processed (below the confirmed block of the head while a backlog
    /// is caught up).
    pub confirmed: u64,
    /// Logs delivered.
    pub logs: usize,
    /// Whether the handler was told to resync after a reorg below the cursor.
    pub reorg: bool,
}

/// Follows the logs of one contract (optionally of some events only) into a [`LogHandler`].
#[derive(Debug)]
pub struct LogFollower<S, H> {
    provider: DynProvider,
    filter: Filter,
    store: Arc<S>,
    name: &'static str,
    config: FollowerConfig,
    handler: H,
    cursor: Option<Cursor>,
    loaded: bool,
    span: u64,
}

impl<S: KvStore, H: LogHandler> LogFollower<S, H> {
    /// A follower named `name` (its cursor's key) of `contract`'s logs, keeping its cursor in
    /// `store`.
    pub fn new(
        provider: DynProvider,
        contract: Address,
        store: Arc<S>,
        name: &'static str,
        config: FollowerConfig,
        handler: H,
    ) -> Self {
        let span = config.max_range.max(1);
        Self {
            provider,
            filter: Filter::new().address(contract),
            store,
            name,
            config,
            handler,
            cursor: None,
            loaded: false,
            span,
        }
    }

    /// Follows only the events with these signatures (topic 0).
    pub fn events(mut self, signatures: Vec<B256>) -> Self {
        self.filter = self.filter.event_signature(signatures);
        self
    }

    /// The handler.
    pub const fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub const fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The settings.
    pub const fn config(&self) -> &FollowerConfig {
        &self.config
    }

    /// The cursor, once loaded or advanced.
    pub const fn cursor(&self) -> Option<&Cursor> {
        self.cursor.as_ref()
    }

    /// Polls every `poll_interval` until `shutdown` resolves. Errors are logged and retried
    /// with backoff (up to 30 s).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = self.config.poll_interval;
        loop {
            match self.poll_once().await {
                Ok(progress) => {
                    delay = self.config.poll_interval;
                    debug!(target: "chain::follower", follower = self.name, ?progress, "polled");
                }
                Err(e) => {
                    warn!(target: "chain::follower", follower = self.name, error = %e, retry_in = ?delay, "poll failed");
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One poll: resyncs the handler if needed, delivers new logs, advances the cursor.
    pub async fn poll_once(&mut self) -> Result<Progress, H::Error> {
        if !self.loaded {
            self.cursor = self
                .store
                .get(CURSORS, self.name.as_bytes())
                .map_err(ChainError::from)?
                .map(|b| serde_json::from_slice(&b))
                .transpose()
                .map_err(|source| ChainError::Corrupt { what: "follower cursor", source })?;
            self.loaded = true;
        }
        let head = self.provider.get_block_number().await.map_err(rpc("eth_blockNumber"))?;
        let confirmed = head.saturating_sub(self.config.confirmations);
        let mut progress = Progress { head, confirmed, ..Progress::default() };

        let from = match self.cursor.clone() {
            Some(c) if c.block <= head && self.block_hash(c.block).await? == Some(c.hash) => c.block + 1,
            previous => {
                if let Some(c) = &previous {
                    warn!(target: "chain::follower", follower = self.name, cursor = c.block, hash = %c.hash, head, "reorg below the confirmation depth; resyncing");
                    progress.reorg = true;
                } else {
                    info!(target: "chain::follower", follower = self.name, head, confirmed, "no cursor yet; resyncing");
                }
                self.handler.resync(progress.reorg).await?;
                confirmed + 1
            }
        };

        let mut start = from;
        let mut requests = 0;
        let mut done_to = from.saturating_sub(1);
        while start <= head && requests < self.config.max_requests.max(1) {
            requests += 1;
            let end = head.min(start.saturating_add(self.span - 1));
            let filter = self.filter.clone().from_block(start).to_block(end);
            match self.provider.get_logs(&filter).await {
                Ok(logs) => {
                    progress.logs += logs.len();
                    self.handler.logs(logs, Range { from: start, to: end, confirmed }).await?;
                    done_to = end;
                    start = end + 1;
                    self.span = self.span.saturating_mul(2).min(self.config.max_range.max(1));
                }
                Err(e) if self.span > 1 => {
                    debug!(target: "chain::follower", follower = self.name, from = start, to = end, error = %e, "eth_getLogs failed; halving the range");
                    self.span /= 2;
                }
                Err(e) => return Err(rpc("eth_getLogs")(e).into()),
            }
        }
        // The new cursor: the confirmed block, or where a backlog stopped below it.
        let block = confirmed.min(done_to);
        self.handler.commit().await?;
        if self.cursor.as_ref().is_none_or(|c| c.block != block) || progress.reorg {
            let hash = self.block_hash(block).await?.ok_or_else(|| {
                ChainError::Inconsistent(format!("block {block} not found below the head {head}"))
            })?;
            let cursor = Cursor { block, hash };
            let bytes = serde_json::to_vec(&cursor)
                .map_err(|source| ChainError::Corrupt { what: "follower cursor", source })?;
            self.store.put(CURSORS, self.name.as_bytes(), &bytes).map_err(ChainError::from)?;
            self.cursor = Some(cursor);
        }
        // One durable write for what the handler wrote and the cursor: a crash before it
        // replays the range, which a handler that re-reads instead of incrementing survives.
        self.store.sync().await.map_err(ChainError::from)?;
        progress.confirmed = block;
        Ok(progress)
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(rpc("eth_getBlockByNumber"))?;
        Ok(block.map(|b| b.header.hash))
    }
}
