//! The guard: follows the chain and settles watched channels whose payer is exiting.
//!
//! One round ([`Guard::tick`]):
//! 1. read the head block (number and timestamp);
//! 2. follow the contract's `ExitRequested`, `ExitCancelled` and `Closed` logs with the
//!    shared [`LogFollower`] (cursor in the watcher's store, reorg rollback, ranges of at most
//!    `max_log_range` blocks halved on RPC errors, at most 64 ranges a round), queueing the
//!    watched channels they name for a re-check;
//! 3. re-read every queued channel with `getChannel` (at start-up: every open watched channel,
//!    since an exit may have been requested while the watcher was down; after a channel's
//!    first voucher: that channel, since its exit may predate it);
//! 4. for every channel whose exit is pending and whose held claim pays more than what was
//!    paid on-chain: re-read it, simulate `settleAuthorized` with `eth_call` (a claim that
//!    would revert is logged with its decoded reason and retried on a later round, not sent),
//!    then send the claims that pass, `settleAuthorized` for one and `settleManyAuthorized` for
//!    several, through the durable [`TxSender`]: stored before broadcast, due before the
//!    first of its exits ends, replaced with higher fees (faster and bigger as that deadline
//!    approaches) while it is not mined. A claim still pending when the round's wait ends
//!    stays in flight and is waited for again first thing next round, its channels left out
//!    of new batches meanwhile; so it is after a restart.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    time::Duration,
};

use alloy::{
    eips::BlockNumberOrTag,
    network::{ReceiptResponse, TransactionBuilder},
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider},
    rpc::types::{Log, TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolEvent},
};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use x402_chain::{
    LogFollower, LogHandler, Outcome, SenderConfig, TxRecord, TxSender,
    follower::{FollowerConfig, Range},
};
use x402_protocol::bindings::IPaymentChannel;
use x402_store::KvStore;

use x402_chain::reader::ChainReader;

use crate::{WatchRecord, Watcher, WatcherError};

/// The name of the guard's cursor in the store.
const CURSOR_NAME: &str = "watcher";

/// Settings of the [`Guard`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSettings {
    /// The most blocks asked for in one `eth_getLogs`.
    pub max_log_range: u64,
    /// How long after `requestExit` to leave the provider to settle by itself, capped at half
    /// of each channel's challenge period. Zero: submit as soon as the exit is seen.
    pub submit_delay: Duration,
    /// How long to wait for a settlement's receipt before retrying on a later round.
    pub receipt_timeout: Duration,
    /// The most claims in one `settleMany`.
    pub max_batch: usize,
    /// The most channel reads or simulations in flight at once.
    pub concurrency: usize,
    /// How the sender replaces a claim not mined in time.
    pub sender: SenderConfig,
}

impl GuardSettings {
    /// The defaults: 2,000-block log ranges, no submit delay, 120 s receipt timeout, batches of
    /// 50 claims, 16 reads in flight, the sender's defaults.
    pub const DEFAULT: Self = Self {
        max_log_range: FollowerConfig::DEFAULT.max_range,
        submit_delay: Duration::ZERO,
        receipt_timeout: Duration::from_secs(120),
        max_batch: 50,
        concurrency: 16,
        sender: SenderConfig::DEFAULT,
    };
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What one round of the guard did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// The head block.
    pub head: u64,
    /// Its timestamp.
    pub timestamp: u64,
    /// The last block whose logs are processed (below the head while a backlog is caught
    /// up), if the scan succeeded.
    pub scanned_to: Option<u64>,
    /// Channels re-read because of a log, a first voucher or a start-up.
    pub rechecked: usize,
    /// Vouchers settled on-chain this round.
    pub settled: Vec<Settlement>,
    /// Channels whose settlement failed this round (retried on a later round), plus failed
    /// scans and re-reads.
    pub failures: usize,
}

/// A voucher the guard got paid on-chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The channel.
    pub channel_id: B256,
    /// The transaction.
    pub tx: B256,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The payee's total paid after it.
    pub paid: U256,
    /// What this settlement paid the payee.
    pub payout: U256,
}

/// Why a watched channel needs no settlement now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Closed on-chain.
    Closed,
    /// No exit pending.
    NoExit,
    /// The challenge period has ended: nothing can be settled any more.
    PeriodOver,
    /// What was paid on-chain already covers the held claim.
    Covered,
    /// The held voucher exceeds the deposit as last read (cannot happen for a voucher the
    /// watcher accepted: deposits only grow).
    OverDeposit,
    /// Leaving the provider time to settle by itself, until this timestamp.
    Waiting(u64),
}

impl fmt::Display for Idle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the channel is closed"),
            Self::NoExit => f.write_str("no exit is pending"),
            Self::PeriodOver => f.write_str("the challenge period has ended"),
            Self::Covered => f.write_str("the held claim is already paid on-chain"),
            Self::OverDeposit => f.write_str("the held voucher exceeds the deposit"),
            Self::Waiting(until) => write!(f, "leaving the provider to settle until {until}"),
        }
    }
}

/// Whether the held claim of `record` should be submitted at chain time `now`.
pub(crate) fn due(record: &WatchRecord, now: u64, delay: Duration) -> Result<(), Idle> {
    let c = &record.chain;
    let v = &record.voucher;
    if !c.open {
        return Err(Idle::Closed);
    }
    if c.exit_at == 0 {
        return Err(Idle::NoExit);
    }
    if now >= c.exit_at {
        return Err(Idle::PeriodOver);
    }
    if record.claimed <= c.paid {
        return Err(Idle::Covered);
    }
    if v.cumulative_amount > c.deposit {
        return Err(Idle::OverDeposit);
    }
    let period = c.challenge_period();
    let requested = c.exit_at.saturating_sub(period);
    let until = requested.saturating_add(delay.as_secs().min(period / 2));
    if now < until {
        return Err(Idle::Waiting(until));
    }
    Ok(())
}

/// Why a claim was not settled this round.
#[derive(Debug)]
enum Failure {
    /// The contract would revert (decoded reason).
    Reverted(String),
    /// The RPC failed.
    Rpc(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reverted(reason) => write!(f, "would revert: {reason}"),
            Self::Rpc(e) => write!(f, "rpc: {e}"),
        }
    }
}

fn contract_failure(e: &alloy::contract::Error) -> Failure {
    x402_protocol::revert::of_contract_error(e).map_or_else(|| Failure::Rpc(e.to_string()), Failure::Reverted)
}

/// What the guard does with the contract's logs: queues the watched channels they name for
/// a re-check.
#[derive(Debug)]
pub struct GuardLogs<S, C> {
    watcher: Watcher<S, C>,
}

impl<S: KvStore, C: ChainReader> LogHandler for GuardLogs<S, C> {
    type Error = WatcherError;

    async fn resync(&mut self, reorg: bool) -> Result<(), WatcherError> {
        // First start: channels watched from now on are re-read after their first voucher.
        // After a reorg below the cursor: every open channel.
        if reorg {
            let open = self.watcher.channels()?.into_iter().filter(|r| r.chain.open).map(|r| r.id);
            self.watcher.mark_for_recheck(open);
        }
        Ok(())
    }

    async fn logs(&mut self, logs: Vec<Log>, range: Range) -> Result<(), WatcherError> {
        let contract = self.watcher.domain().contract();
        let mut hits = HashSet::new();
        for log in &logs {
            if log.inner.address != contract {
                continue;
            }
            if let Some(&id) = log.topics().get(1)
                && self.watcher.watches_open(id)?
            {
                hits.insert(id);
            }
        }
        if !hits.is_empty() {
            debug!(target: "watcher", from = range.from, to = range.to, channels = hits.len(), "channel events");
            self.watcher.mark_for_recheck(hits);
        }
        Ok(())
    }
}

/// Follows the chain and settles watched channels whose payer is exiting.
pub struct Guard<S: KvStore, C> {
    watcher: Watcher<S, C>,
    provider: DynProvider,
    contract: Address,
    sender: TxSender<S>,
    settings: GuardSettings,
    follower: tokio::sync::Mutex<LogFollower<S, GuardLogs<S, C>>>,
    /// The last failure logged per channel, so a failure repeated every round is logged once.
    failures: parking_lot::Mutex<HashMap<B256, String>>,
}

impl<S: KvStore, C> fmt::Debug for Guard<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("contract", &self.contract)
            .field("from", &self.sender.address())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: KvStore, C: ChainReader> Guard<S, C> {
    /// A guard for `watcher`'s channels, reading the chain through `provider` and sending
    /// claims from `key`'s account (which pays the gas); its transactions in flight are kept
    /// in the watcher's store.
    pub fn new(
        watcher: Watcher<S, C>,
        provider: DynProvider,
        key: PrivateKeySigner,
        settings: GuardSettings,
    ) -> Self {
        let contract = watcher.domain().contract();
        let store = std::sync::Arc::clone(watcher.store());
        let sender = TxSender::new(
            provider.clone(),
            key,
            watcher.domain().chain_id(),
            std::sync::Arc::clone(&store),
            settings.sender.clone(),
            "watcher",
        );
        let follower = LogFollower::new(
            provider.clone(),
            contract,
            store,
            CURSOR_NAME,
            FollowerConfig { max_range: settings.max_log_range.max(1), ..FollowerConfig::DEFAULT },
            GuardLogs { watcher: watcher.clone() },
        )
        .events(vec![
            IPaymentChannel::ExitRequested::SIGNATURE_HASH,
            IPaymentChannel::ExitCancelled::SIGNATURE_HASH,
            IPaymentChannel::Closed::SIGNATURE_HASH,
        ]);
        Self {
            watcher,
            provider,
            contract,
            sender,
            settings,
            follower: tokio::sync::Mutex::new(follower),
            failures: parking_lot::Mutex::default(),
        }
    }

    /// The watcher's account.
    pub const fn from(&self) -> Address {
        self.sender.address()
    }

    /// The sender of the guard's claims (its counters).
    pub const fn sender(&self) -> &TxSender<S> {
        &self.sender
    }

    /// Runs rounds every `poll_interval` (and early when a push asks for it) until `shutdown`
    /// resolves. A round in progress is abandoned at shutdown; the next start re-reads every
    /// channel, so nothing is lost.
    pub async fn run(&self, poll_interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        info!(
            target: "watcher",
            watcher = %self.from(),
            contract = %self.contract,
            ?poll_interval,
            "guard started"
        );
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                result = self.tick() => match result {
                    Ok(report) if !report.settled.is_empty() || report.failures > 0 => info!(
                        target: "watcher",
                        head = report.head,
                        rechecked = report.rechecked,
                        settled = report.settled.len(),
                        failures = report.failures,
                        "guard round"
                    ),
                    Ok(report) => debug!(
                        target: "watcher",
                        head = report.head,
                        scanned_to = ?report.scanned_to,
                        rechecked = report.rechecked,
                        "guard round"
                    ),
                    Err(e) => warn!(target: "watcher", error = %e, "guard round failed; retrying"),
                },
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = self.watcher.woken() => {}
                () = tokio::time::sleep(poll_interval) => {}
            }
        }
        info!(target: "watcher", "guard stopped");
    }

    /// One round: scan, re-check, settle what is due. Fails only if the head block cannot be
    /// read or the store fails; other failures are counted in the report and retried on the
    /// next round.
    pub async fn tick(&self) -> Result<TickReport, WatcherError> {
        let (head, timestamp) = self.head().await?;
        let mut report = TickReport { head, timestamp, ..TickReport::default() };

        // Claims left in flight by an earlier round or run: see them through first, and keep
        // their channels out of new batches while they are pending.
        let mut in_flight = HashSet::new();
        for record in self.sender.in_flight()? {
            let outcome = self.sender.wait_for(record, Some(self.settings.receipt_timeout)).await;
            if let Some(pending) = self.settled(outcome, &mut report).await? {
                in_flight.extend(pending);
            }
        }

        match self.follower.lock().await.poll_once().await {
            Ok(progress) => report.scanned_to = Some(progress.confirmed),
            Err(e) => {
                report.failures += 1;
                warn!(target: "watcher", head, error = %e, "log scan failed; retrying next round");
            }
        }

        let ids = self.watcher.take_rechecks();
        report.rechecked = ids.len();
        let failed = self.refresh_all(&ids).await;
        if !failed.is_empty() {
            report.failures += failed.len();
            self.watcher.mark_for_recheck(failed);
        }

        let delay = self.settings.submit_delay;
        let candidates: Vec<B256> = self
            .watcher
            .channels()?
            .into_iter()
            .filter(|r| due(r, timestamp, delay).is_ok() && !in_flight.contains(&r.id))
            .map(|r| r.id)
            .collect();
        if !candidates.is_empty() {
            let ready = self.prepare(&candidates, timestamp, &mut report).await;
            for batch in ready.chunks(self.settings.max_batch.max(1)) {
                self.submit(batch, &mut report).await?;
            }
        }
        // The cursor and refreshed records.
        self.watcher.store().sync().await?;
        Ok(report)
    }

    async fn head(&self) -> Result<(u64, u64), WatcherError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(x402_chain::error::rpc("eth_getBlockByNumber"))?
            .ok_or_else(|| x402_chain::ChainError::Inconsistent("the node has no latest block".into()))?;
        Ok((block.header.number, block.header.timestamp))
    }

    /// Re-reads `ids` with bounded concurrency; returns those that failed.
    async fn refresh_all(&self, ids: &[B256]) -> Vec<B256> {
        let mut failed = Vec::new();
        for chunk in ids.chunks(self.settings.concurrency.max(1)) {
            // Whatever does not report success (an error or a panicked task) is retried.
            let mut unfinished: HashSet<B256> = chunk.iter().copied().collect();
            let mut tasks = JoinSet::new();
            for &id in chunk {
                let watcher = self.watcher.clone();
                tasks.spawn(async move { (id, watcher.refresh(id).await) });
            }
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((id, Ok(_))) => {
                        unfinished.remove(&id);
                    }
                    Ok((id, Err(e))) => {
                        warn!(
                            target: "watcher",
                            %id,
                            error = %e,
                            "cannot re-read channel; retrying next round"
                        );
                    }
                    Err(e) => warn!(target: "watcher", error = %e, "re-read task failed"),
                }
            }
            failed.extend(unfinished);
        }
        failed
    }

    /// Re-reads each candidate and simulates its claim; returns the records whose claim
    /// passes.
    async fn prepare(&self, ids: &[B256], now: u64, report: &mut TickReport) -> Vec<WatchRecord> {
        let mut ready = Vec::new();
        for chunk in ids.chunks(self.settings.concurrency.max(1)) {
            let mut tasks = JoinSet::new();
            for &id in chunk {
                let watcher = self.watcher.clone();
                let provider = self.provider.clone();
                let (contract, from, delay) = (self.contract, self.from(), self.settings.submit_delay);
                tasks.spawn(async move {
                    let record = match watcher.refresh(id).await {
                        Ok(Some(record)) => record,
                        Ok(None) => return (id, Ok(None)),
                        Err(e) => return (id, Err(Failure::Rpc(e.to_string()))),
                    };
                    if let Err(idle) = due(&record, now, delay) {
                        debug!(
                            target: "watcher",
                            %id,
                            reason = %idle,
                            "nothing to settle after re-reading"
                        );
                        return (id, Ok(None));
                    }
                    let channels = IPaymentChannel::new(contract, &provider);
                    let call = channels.settleAuthorized(record.claim(), record.payee_signature.clone());
                    match call.from(from).call().await {
                        Ok(_) => (id, Ok(Some(record))),
                        Err(e) => (id, Err(contract_failure(&e))),
                    }
                });
            }
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((id, Ok(Some(record)))) => {
                        self.failures.lock().remove(&id);
                        ready.push(record);
                    }
                    Ok((_, Ok(None))) => {}
                    Ok((id, Err(failure))) => {
                        report.failures += 1;
                        self.note_failure(id, &failure);
                    }
                    Err(e) => {
                        report.failures += 1;
                        warn!(target: "watcher", error = %e, "settlement check task failed");
                    }
                }
            }
        }
        ready.sort_by_key(|r| r.id);
        ready
    }

    /// Logs a failure to settle `id`: at `warn` when it is new, at `debug` when it repeats.
    fn note_failure(&self, id: B256, failure: &Failure) {
        let message = failure.to_string();
        let repeated = self.failures.lock().insert(id, message.clone()).is_some_and(|last| last == message);
        if repeated {
            debug!(
                target: "watcher",
                %id,
                error = %message,
                "settlement still failing; retrying next round"
            );
        } else {
            warn!(target: "watcher", %id, error = %message, "cannot settle; retrying next round");
        }
    }

    /// Sends one batch of claims and waits for its receipt. Errors only if the store fails.
    async fn submit(&self, batch: &[WatchRecord], report: &mut TickReport) -> Result<(), WatcherError> {
        let input = match batch {
            [one] => IPaymentChannel::settleAuthorizedCall {
                claim: one.claim(),
                payeeSignature: one.payee_signature.clone(),
            }
            .abi_encode(),
            many => IPaymentChannel::settleManyAuthorizedCall {
                claims: many.iter().map(WatchRecord::claim).collect(),
                payeeSignatures: many.iter().map(|r| r.payee_signature.clone()).collect(),
            }
            .abi_encode(),
        };
        let request = TransactionRequest::default().with_to(self.contract).with_input(input);
        // The claim must land before the first of the batch's exits ends.
        let deadline = batch.iter().map(|r| r.chain.exit_at).filter(|at| *at != 0).min();
        let channels: Vec<B256> = batch.iter().map(|r| r.id).collect();
        let context = serde_json::json!({ "channels": channels });
        let record = match self.sender.send(request, context, deadline).await {
            Ok(record) => record,
            Err(x402_chain::ChainError::Store(e)) => return Err(e.into()),
            Err(e) => {
                let failure = Failure::Rpc(e.to_string());
                report.failures += batch.len();
                for record in batch {
                    self.note_failure(record.id, &failure);
                }
                return Ok(());
            }
        };
        let tx = record.versions.first().map(|v| v.hash).unwrap_or_default();
        for r in batch {
            info!(
                target: "watcher",
                id = %r.id,
                %tx,
                nonce = r.voucher.nonce,
                claimed = %r.claimed,
                paid_before = %r.chain.paid,
                exit_at = r.chain.exit_at,
                "settlement sent"
            );
            self.watcher.update(r.id, |w| w.last_tx = Some(tx)).await?;
        }
        self.watcher.store().sync().await?;
        let outcome = self.sender.wait_for(record, Some(self.settings.receipt_timeout)).await;
        self.settled(outcome, report).await?;
        Ok(())
    }

    /// Applies how a claim transaction ended; returns the channels of one still pending.
    async fn settled(
        &self,
        outcome: Result<Outcome, x402_chain::ChainError>,
        report: &mut TickReport,
    ) -> Result<Option<Vec<B256>>, WatcherError> {
        let channels_of = |record: &TxRecord| -> Vec<B256> {
            serde_json::from_value::<Vec<B256>>(record.context["channels"].clone()).unwrap_or_default()
        };
        match outcome {
            Err(x402_chain::ChainError::Store(e)) => Err(e.into()),
            Err(e) => {
                report.failures += 1;
                warn!(target: "watcher", error = %e, "cannot follow a claim transaction; retrying next round");
                Ok(None)
            }
            Ok(Outcome::Pending(record)) => {
                let channels = channels_of(&record);
                report.failures += channels.len();
                warn!(
                    target: "watcher",
                    nonce = record.nonce,
                    versions = record.versions.len(),
                    "claim not mined yet; the sender keeps replacing it"
                );
                Ok(Some(channels))
            }
            Ok(Outcome::Replaced(record)) => {
                report.failures += channels_of(&record).len();
                warn!(target: "watcher", nonce = record.nonce, "claim nonce used by another transaction; retrying next round");
                Ok(None)
            }
            Ok(Outcome::Mined { record, receipt }) => {
                let channels = channels_of(&record);
                let tx = receipt.transaction_hash;
                for id in &channels {
                    self.watcher.update(*id, |r| r.last_tx = Some(tx)).await?;
                }
                self.apply_receipt(&channels, &receipt, report).await?;
                Ok(None)
            }
        }
    }

    /// Records what a mined claim transaction settled.
    async fn apply_receipt(
        &self,
        batch: &[B256],
        receipt: &TransactionReceipt,
        report: &mut TickReport,
    ) -> Result<(), WatcherError> {
        let tx = receipt.transaction_hash;
        if !receipt.status() {
            report.failures += batch.len();
            warn!(
                target: "watcher",
                %tx,
                block = ?receipt.block_number(),
                channels = batch.len(),
                "settlement reverted; retrying next round"
            );
            return Ok(());
        }
        let mut settled = HashSet::new();
        for log in receipt.inner.logs() {
            if log.inner.address != self.contract {
                continue;
            }
            if let Ok(event) = log.log_decode::<IPaymentChannel::Settled>() {
                let e = event.inner.data;
                let s = Settlement {
                    channel_id: e.channelId,
                    tx,
                    nonce: e.nonce,
                    paid: e.paid,
                    payout: e.payout,
                };
                info!(
                    target: "watcher",
                    id = %s.channel_id,
                    %tx,
                    nonce = s.nonce,
                    paid = %s.paid,
                    payout = %s.payout,
                    gas_used = receipt.gas_used,
                    "claim settled"
                );
                self.watcher
                    .update(s.channel_id, |r| {
                        r.chain.paid = r.chain.paid.max(s.paid);
                    })
                    .await?;
                settled.insert(s.channel_id);
                report.settled.push(s);
            } else if let Ok(event) = log.log_decode::<IPaymentChannel::ClaimSkipped>() {
                let e = event.inner.data;
                let reason = x402_protocol::revert::describe(&e.reason);
                self.note_failure(e.channelId, &Failure::Reverted(reason));
            }
        }
        let missing = batch.iter().filter(|id| !settled.contains(*id)).count();
        report.failures += missing;
        if missing > 0 {
            warn!(
                target: "watcher",
                %tx,
                missing,
                "claims not settled by the transaction; retrying next round"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Bytes;
    use x402_protocol::bindings::IPaymentChannel::ChannelParams;

    use super::*;
    use x402_chain::channel::{OnchainChannel, StoredVoucher};

    fn record(exit_at: u64, paid: u64, claimed: u64, amount: u64) -> WatchRecord {
        WatchRecord {
            id: B256::repeat_byte(7),
            chain: OnchainChannel {
                params: ChannelParams {
                    payer: Address::repeat_byte(1),
                    payee: Address::repeat_byte(2),
                    token: Address::repeat_byte(3),
                    signer: Address::ZERO,
                    challengePeriod: 3_600,
                    salt: B256::ZERO,
                },
                signer_is_contract: false,
                deposit: U256::from(1_000),
                exit_at,
                open: true,
                paid: U256::from(paid),
                pending_close: false,
            },
            voucher: StoredVoucher {
                nonce: 5,
                cumulative_amount: U256::from(amount),
                signature: Bytes::new(),
            },
            claimed: U256::from(claimed),
            payee_signature: Bytes::from_static(&[9; 65]),
            last_tx: None,
        }
    }

    #[test]
    fn due_table() {
        // Exit requested at 10_000, ends at 13_600.
        let exit = 13_600;
        let mut closed = record(exit, 0, 500, 500);
        closed.chain.open = false;
        let mut over_deposit = record(exit, 0, 500, 500);
        over_deposit.chain.deposit = U256::from(400);
        let none = Duration::ZERO;
        let cases = [
            ("pending exit, unpaid", record(exit, 0, 500, 500), 10_000, none, Ok(())),
            ("partly paid by the payee", record(exit, 300, 500, 500), 13_599, none, Ok(())),
            ("claim below the ceiling", record(exit, 0, 200, 500), 10_000, none, Ok(())),
            ("closed", closed, 10_000, none, Err(Idle::Closed)),
            ("no exit", record(0, 0, 500, 500), 10_000, none, Err(Idle::NoExit)),
            ("period over", record(exit, 0, 500, 500), 13_600, none, Err(Idle::PeriodOver)),
            ("covered", record(exit, 500, 500, 500), 10_000, none, Err(Idle::Covered)),
            ("covered below the ceiling", record(exit, 200, 200, 500), 10_000, none, Err(Idle::Covered)),
            ("over deposit", over_deposit, 10_000, none, Err(Idle::OverDeposit)),
            (
                "delay",
                record(exit, 0, 500, 500),
                10_599,
                Duration::from_secs(600),
                Err(Idle::Waiting(10_600)),
            ),
            ("delay passed", record(exit, 0, 500, 500), 10_600, Duration::from_secs(600), Ok(())),
            // The delay never eats more than half the period.
            ("delay capped", record(exit, 0, 500, 500), 11_800, Duration::from_secs(86_400), Ok(())),
            (
                "delay capped, waiting",
                record(exit, 0, 500, 500),
                11_799,
                Duration::from_secs(86_400),
                Err(Idle::Waiting(11_800)),
            ),
        ];
        for (name, rec, now, delay, expected) in cases {
            assert_eq!(due(&rec, now, delay), expected, "{name}");
        }
    }

    #[test]
    fn claims_what_the_payee_authorised() {
        let rec = record(13_600, 100, 300, 500);
        let claim = rec.claim();
        assert_eq!(
            (claim.nonce, claim.cumulativeAmount, claim.claimed),
            (5, U256::from(500), U256::from(300))
        );
        assert_eq!(claim.channel, rec.chain.params);
    }
}
