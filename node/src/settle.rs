//! Batch settlement: turns the vouchers the node stored into money on-chain.
//!
//! A round:
//! 1. finishes any settlement transaction left in flight (by a crash, or still pending);
//! 2. [`plan`]s what to settle or close from the channel records and the
//!    [`SettlementPolicy`]: channels with a pending exit (closed first, before their
//!    challenge period ends), channels whose client asked for a cooperative close, channels
//!    whose unsettled amount reached the threshold or that were not settled for too long;
//! 3. simulates every item (`eth_call` of `close`/`settle` from the provider) and drops those
//!    that would fail, so one bad channel cannot sink a batch;
//! 4. signs one `closeMany` and one `settleMany` transaction, stores it (raw bytes, hash,
//!    nonce) durably *before* broadcasting it, and waits for its receipt, re-broadcasting a
//!    dropped transaction and replacing a stuck one with higher fees (same nonce, so at most
//!    one of them can be mined).
//!
//! A node killed at any point finds its in-flight transaction in the store on restart and
//! resolves it before planning anything new; what was paid on-chain is never claimed again,
//! because a claim is only made for what the node charged above the channel's `paid`, and the
//! contract never lets `paid` move backwards.

use std::{collections::HashSet, sync::Arc, time::Duration};

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolEvent},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};
pub use x402_chain::sender::CrashPoint;
use x402_chain::{Outcome, SenderConfig, TxRecord, TxSender, error::rpc};
use x402_protocol::bindings::IPaymentChannel::{self, Claim};
use x402_store::KvStore;

use crate::{
    Engine, Error,
    chain::RpcChain,
    channel::{ChannelRecord, ChannelStatus},
    unix_now,
};

/// Simulations in flight at once.
const SIMULATION_CONCURRENCY: usize = 8;

/// When the node settles, and how much it may spend doing so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettlementPolicy {
    /// Settle a channel once what it owes reaches this (0: never for this reason).
    pub threshold: U256,
    /// Settle a channel that owes anything once it was last settled this long ago.
    pub max_age: Duration,
    /// A pending exit whose challenge period ends within this margin is settled even when gas
    /// is above the cap.
    pub exit_margin: Duration,
    /// The most channels in one transaction.
    pub max_batch: usize,
    /// Above this `maxFeePerGas` (wei) only urgent exits are settled; `None`: no cap.
    pub max_fee_per_gas: Option<u128>,
    /// Time between background rounds.
    pub interval: Duration,
    /// Replace a transaction not mined after this long with one paying higher fees.
    pub resend_after: Duration,
    /// How often to look for a receipt.
    pub receipt_poll: Duration,
}

impl Default for SettlementPolicy {
    fn default() -> Self {
        Self {
            threshold: U256::ZERO,
            max_age: Duration::from_secs(24 * 3600),
            exit_margin: Duration::from_secs(3600),
            max_batch: 100,
            max_fee_per_gas: None,
            interval: Duration::from_secs(60),
            resend_after: SenderConfig::DEFAULT.resend_after,
            receipt_poll: SenderConfig::DEFAULT.receipt_poll,
        }
    }
}

/// The two kinds of batch transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// `closeMany`: claim (if anything is owed) and close, refunding the payer.
    Close,
    /// `settleMany`: claim; the channel stays open.
    Settle,
}

impl BatchKind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::Settle => "settle",
        }
    }
}

/// Why a channel is in a batch, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The payer requested an exit: claim before the challenge period ends.
    Exit,
    /// The client asked for a cooperative close.
    CloseRequested,
    /// The unsettled amount reached the threshold.
    Threshold,
    /// Not settled for longer than the policy's maximum age.
    Age,
    /// A round run on demand with `force`.
    Forced,
}

/// One channel in a planned batch.
#[derive(Clone, Debug)]
pub struct Item {
    /// The channel.
    pub id: B256,
    /// Why.
    pub reason: Reason,
    /// The claim sent on-chain.
    pub claim: Claim,
    /// When its exit's challenge period ends (0: no exit).
    pub exit_at: u64,
}

/// What a round would send.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Channels to close, most urgent first.
    pub close: Vec<Item>,
    /// Channels to settle, largest amount first.
    pub settle: Vec<Item>,
    /// When a close left out for now (see [`CLOSE_GRACE`]) becomes due (unix seconds).
    pub wake_at: Option<u64>,
}

/// How long after a cooperative close request, whose authorisation the node signed, the node
/// leaves the close to the client (who may submit `closeWithAuthorization` itself) before
/// closing the channel in a batch of its own: a node that closed at once would race the
/// client's transaction, and lose, paying gas for a skipped item.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Decides which channels to settle or close at unix time `now`. With `force`, every channel
/// that owes anything is settled.
pub fn plan(records: &[ChannelRecord], policy: &SettlementPolicy, now: u64, force: bool) -> Plan {
    let mut close = Vec::new();
    let mut settle = Vec::new();
    let mut wake_at = None;
    for r in records {
        if r.status == ChannelStatus::Closed || !r.chain.open || r.chain.pending_close {
            continue;
        }
        let claim = r.claimable().map(|v| Claim {
            channel: r.chain.params.clone(),
            nonce: v.nonce,
            cumulativeAmount: v.cumulative_amount,
            claimed: r.charged(),
            signature: v.signature.clone(),
        });
        let exit_at = r.chain.exit_at;
        if exit_at != 0 {
            // Nothing can be claimed once the period is over; nothing owed, nothing to do.
            if let Some(claim) = claim.filter(|_| exit_at > now) {
                close.push(Item { id: r.id, reason: Reason::Exit, claim, exit_at });
            }
        } else if let Some(requested) = r.close {
            if requested.authorization_deadline > now {
                let due = requested.requested_at.saturating_add(CLOSE_GRACE.as_secs());
                if due > now && !force {
                    wake_at = Some(wake_at.map_or(due, |w: u64| w.min(due)));
                    continue;
                }
            }
            // Closing without a voucher pays what was already paid and refunds the rest.
            let claim = claim.unwrap_or(Claim {
                channel: r.chain.params.clone(),
                nonce: 0,
                cumulativeAmount: U256::ZERO,
                claimed: U256::ZERO,
                signature: Bytes::new(),
            });
            close.push(Item { id: r.id, reason: Reason::CloseRequested, claim, exit_at });
        } else if let Some(claim) = claim {
            let unsettled = r.unsettled();
            let reason = if force {
                Some(Reason::Forced)
            } else if !policy.threshold.is_zero() && unsettled >= policy.threshold {
                Some(Reason::Threshold)
            } else if now.saturating_sub(r.settled_at) >= policy.max_age.as_secs() {
                Some(Reason::Age)
            } else {
                None
            };
            if let Some(reason) = reason {
                settle.push(Item { id: r.id, reason, claim, exit_at });
            }
        }
    }
    close.sort_by_key(|i| (i.reason, if i.exit_at == 0 { u64::MAX } else { i.exit_at }));
    settle.sort_by_key(|i| std::cmp::Reverse(i.claim.claimed));
    close.truncate(policy.max_batch);
    settle.truncate(policy.max_batch);
    Plan { close, settle, wake_at }
}

/// What the sender keeps with a settlement transaction, to finish it after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BatchContext {
    kind: BatchKind,
    channels: Vec<B256>,
}

/// The outcome of one batch transaction.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchReport {
    /// `close` or `settle`.
    pub kind: BatchKind,
    /// The mined transaction (zero if it was replaced by another use of its nonce).
    pub tx: B256,
    /// Whether it succeeded.
    pub success: bool,
    /// Channels settled or closed.
    pub applied: Vec<B256>,
    /// Channels the contract skipped.
    pub skipped: Vec<B256>,
    /// Gas used.
    pub gas_used: u64,
    /// Wei paid for it.
    pub fee: u128,
    /// Whether it was found in flight from an earlier round (e.g. before a crash).
    pub recovered: bool,
    /// How many times it was replaced with higher fees before one version was mined.
    pub replacements: usize,
}

/// What a round did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundReport {
    /// Transactions mined.
    pub batches: Vec<BatchReport>,
    /// Items dropped because their simulation failed.
    pub dropped: Vec<B256>,
    /// Items postponed because gas was above the cap.
    pub postponed: usize,
    /// When a close left to its client for now becomes due (unix seconds).
    #[serde(skip)]
    pub wake_at: Option<u64>,
}

/// Settles channels on-chain from the provider's key. Rounds are serialised.
#[derive(Debug)]
pub struct Settler<S> {
    engine: Engine<S, RpcChain>,
    sender: Arc<TxSender<S>>,
    address: Address,
    policy: SettlementPolicy,
    round: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Whether the transactions of other users of the payee's key left in flight by an earlier
    /// run have been resolved (the first round does it).
    leftovers_resolved: std::sync::atomic::AtomicBool,
}

impl<S: KvStore> Settler<S> {
    /// A settler for `engine`'s channels, paying gas from `key` (the payee's key).
    pub fn new(engine: Engine<S, RpcChain>, key: PrivateKeySigner, policy: SettlementPolicy) -> Self {
        let sender = Arc::new(Self::sender_for(&engine, key, &policy));
        Self::with_sender(engine, sender, policy)
    }

    /// The durable sender of `key`'s transactions the settler would use. Every part of the node
    /// sending from the payee's key (the settler, the `exact` scheme's transfers) shares one, so
    /// that one sender owns the account's nonces.
    pub fn sender_for(
        engine: &Engine<S, RpcChain>,
        key: PrivateKeySigner,
        policy: &SettlementPolicy,
    ) -> TxSender<S> {
        let sender = TxSender::new(
            engine.chain().provider().clone(),
            key,
            engine.terms().chain_id,
            Arc::clone(engine.store()),
            SenderConfig {
                resend_after: policy.resend_after,
                receipt_poll: policy.receipt_poll,
                ..SenderConfig::DEFAULT
            },
            "settler",
        );
        // Exported on the node's /metrics (the alert of a missed deadline among them). A second
        // settler on the same engine keeps the first one's counters registered.
        for collector in sender.metrics().collectors() {
            let _ = engine.metrics().register(collector);
        }
        sender
    }

    /// A settler for `engine`'s channels sending through `sender` (shared with the other users
    /// of the payee's key).
    pub fn with_sender(
        engine: Engine<S, RpcChain>,
        sender: Arc<TxSender<S>>,
        policy: SettlementPolicy,
    ) -> Self {
        let address = sender.address();
        Self {
            engine,
            sender,
            address,
            policy,
            round: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            leftovers_resolved: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes rounds stop at `point` as if the node had been killed there.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn crash_at(mut self, point: Option<CrashPoint>) -> Self {
        self.sender = Arc::new(
            Arc::try_unwrap(self.sender)
                .unwrap_or_else(|_| panic!("crash_at before the sender is shared"))
                .crash_at(point),
        );
        self
    }

    /// The sender of the settlement transactions (its counters, its account).
    pub fn sender(&self) -> &Arc<TxSender<S>> {
        &self.sender
    }

    /// The policy.
    pub const fn policy(&self) -> &SettlementPolicy {
        &self.policy
    }

    /// Asks the background loop for a round now (e.g. after a close request).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs rounds every `policy.interval` (or when woken) until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let mut next = self.policy.interval;
            match self.round(false).await {
                Ok(report) => {
                    if !report.batches.is_empty() || !report.dropped.is_empty() {
                        info!(target: "node::settle", batches = report.batches.len(), dropped = report.dropped.len(), postponed = report.postponed, "settlement round");
                    }
                    if let Some(at) = report.wake_at {
                        next = next.min(Duration::from_secs(at.saturating_sub(unix_now()).max(1)));
                    }
                }
                Err(e) => {
                    warn!(target: "node::settle", error = %e, "settlement round failed; retrying later")
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(next) => {}
            }
        }
    }

    /// One round: resolves transactions in flight, then settles what the policy selects
    /// (everything owed, with `force`).
    pub async fn round(&self, force: bool) -> Result<RoundReport, Error> {
        let _exclusive = self.round.lock().await;
        let mut report = RoundReport::default();
        for record in self.sender.in_flight()? {
            if serde_json::from_value::<BatchContext>(record.context.clone()).is_err() {
                // Another user of the payee's key (an `exact` transfer) sent it. One left by an
                // earlier run is resolved in the first round, only so that it leaves the outbox;
                // later ones are being waited for by their sender.
                if self.leftovers_resolved.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                info!(target: "node::settle", nonce = record.nonce, "resolving another transaction of the payee's key left in flight");
                self.sender.wait(record).await?;
                continue;
            }
            info!(target: "node::settle", nonce = record.nonce, versions = record.versions.len(), "resolving a settlement left in flight");
            let outcome = self.sender.wait(record).await?;
            report.batches.push(self.settled(outcome, true).await?);
        }
        self.leftovers_resolved.store(true, std::sync::atomic::Ordering::Relaxed);

        let now = unix_now();
        let records = self.engine.due_channels().await?;
        let Plan { mut close, mut settle, wake_at } = plan(&records, &self.policy, now, force);
        report.wake_at = wake_at;
        if close.is_empty() && settle.is_empty() {
            return Ok(report);
        }
        let fees = self.provider().estimate_eip1559_fees().await.map_err(rpc("eth_feeHistory"))?;
        if let Some(cap) = self.policy.max_fee_per_gas.filter(|cap| fees.max_fee_per_gas > *cap) {
            let margin = self.policy.exit_margin.as_secs();
            let before = close.len() + settle.len();
            close.retain(|i| i.reason == Reason::Exit && i.exit_at <= now + margin);
            settle.clear();
            report.postponed = before - close.len();
            warn!(target: "node::settle", max_fee_per_gas = fees.max_fee_per_gas, cap, postponed = report.postponed, "gas above the cap; settling only exits about to end");
        }
        for (kind, items) in [(BatchKind::Close, close), (BatchKind::Settle, settle)] {
            // A batch carrying exits must land before the first of them ends.
            let deadline = items.iter().map(|i| i.exit_at).filter(|at| *at != 0).min();
            let (claims, dropped) = self.simulate(kind, items).await;
            report.dropped.extend(dropped);
            if claims.is_empty() {
                continue;
            }
            let record = self.send(kind, claims, deadline).await?;
            let outcome = self.sender.wait(record).await?;
            report.batches.push(self.settled(outcome, false).await?);
        }
        Ok(report)
    }

    fn provider(&self) -> &alloy::providers::DynProvider {
        self.engine.chain().provider()
    }

    fn contract(&self) -> IPaymentChannel::IPaymentChannelInstance<&alloy::providers::DynProvider> {
        IPaymentChannel::new(self.engine.chain().contract(), self.provider())
    }

    /// Keeps the items whose `close`/`settle` call succeeds on its own.
    async fn simulate(&self, kind: BatchKind, items: Vec<Item>) -> (Vec<(B256, Claim)>, Vec<B256>) {
        let contract = self.contract();
        let contract = &contract;
        let results: Vec<(Item, Result<(), String>)> = futures::stream::iter(items)
            .map(|item| async move {
                let result = match kind {
                    BatchKind::Close => {
                        contract.close(item.claim.clone()).from(self.address).call().await.map(drop)
                    }
                    BatchKind::Settle => {
                        contract.settle(item.claim.clone()).from(self.address).call().await.map(drop)
                    }
                };
                (item, result.map_err(|e| revert_reason(&e)))
            })
            .buffer_unordered(SIMULATION_CONCURRENCY)
            .collect()
            .await;
        let mut claims = Vec::new();
        let mut dropped = Vec::new();
        for (item, result) in results {
            match result {
                Ok(()) => claims.push((item.id, item.claim)),
                Err(reason) => {
                    warn!(target: "node::settle", channel = %item.id, ?kind, %reason, "claim would fail; left out of the batch");
                    self.engine.metrics().claims_dropped.inc();
                    dropped.push(item.id);
                }
            }
        }
        (claims, dropped)
    }

    /// Hands the batch to the sender, which stores it durably before broadcasting it.
    async fn send(
        &self,
        kind: BatchKind,
        claims: Vec<(B256, Claim)>,
        deadline: Option<u64>,
    ) -> Result<TxRecord, Error> {
        let (channels, claims): (Vec<B256>, Vec<Claim>) = claims.into_iter().unzip();
        let input = match kind {
            BatchKind::Close => IPaymentChannel::closeManyCall { claims }.abi_encode(),
            BatchKind::Settle => IPaymentChannel::settleManyCall { claims }.abi_encode(),
        };
        let request = TransactionRequest::default().with_to(self.engine.chain().contract()).with_input(input);
        let context =
            serde_json::to_value(BatchContext { kind, channels }).map_err(Error::SettlementRecord)?;
        let record = self.sender.send(request, context, deadline).await?;
        self.engine.metrics().settlement_txs.with_label_values(&[kind.as_str()]).inc();
        Ok(record)
    }

    /// Applies what the sender reports of a settlement transaction.
    async fn settled(&self, outcome: Outcome, recovered: bool) -> Result<BatchReport, Error> {
        match outcome {
            Outcome::Mined { record, receipt } => {
                let context: BatchContext =
                    serde_json::from_value(record.context.clone()).map_err(Error::SettlementRecord)?;
                let replacements = record.replacements();
                self.engine
                    .metrics()
                    .settlement_txs
                    .with_label_values(&[context.kind.as_str()])
                    .inc_by(replacements as u64);
                self.finish(context, replacements, &receipt, recovered).await
            }
            Outcome::Replaced(record) | Outcome::Pending(record) => {
                let context: BatchContext =
                    serde_json::from_value(record.context.clone()).map_err(Error::SettlementRecord)?;
                warn!(target: "node::settle", nonce = record.nonce, "settlement nonce used by another transaction; the batch will be planned again");
                Ok(BatchReport {
                    kind: context.kind,
                    tx: B256::ZERO,
                    success: false,
                    applied: Vec::new(),
                    skipped: Vec::new(),
                    gas_used: 0,
                    fee: 0,
                    recovered,
                    replacements: record.replacements(),
                })
            }
        }
    }

    async fn finish(
        &self,
        record: BatchContext,
        replacements: usize,
        receipt: &TransactionReceipt,
        recovered: bool,
    ) -> Result<BatchReport, Error> {
        let mut applied = HashSet::new();
        let mut skipped = Vec::new();
        let mut payments = Vec::new();
        for log in receipt.inner.logs() {
            let topics = log.topics();
            match topics.first() {
                Some(sig) if *sig == IPaymentChannel::Closed::SIGNATURE_HASH => {
                    if let Ok(closed) = log.log_decode::<IPaymentChannel::Closed>() {
                        let e = closed.inner.data;
                        applied.insert(e.channelId);
                        payments.push((e.channelId, e.paid, true));
                    }
                }
                Some(sig) if *sig == IPaymentChannel::Settled::SIGNATURE_HASH => {
                    if let Ok(settled) = log.log_decode::<IPaymentChannel::Settled>() {
                        let e = settled.inner.data;
                        if record.kind == BatchKind::Settle {
                            applied.insert(e.channelId);
                        }
                        payments.push((e.channelId, e.paid, false));
                    }
                }
                Some(sig) if *sig == IPaymentChannel::ClaimSkipped::SIGNATURE_HASH => {
                    skipped.extend(topics.get(1).copied());
                }
                _ => {}
            }
        }
        // The receipt's events say what was paid: applied directly, one write per channel.
        let now = unix_now();
        for (id, paid, closed) in payments {
            if record.channels.contains(&id) {
                let settled_at = applied.contains(&id).then_some(now);
                self.engine.apply_paid(id, paid, closed, settled_at).await?;
            }
        }
        let success = receipt.status();
        self.engine.metrics().channels_settled.inc_by(applied.len() as u64);
        let report = BatchReport {
            kind: record.kind,
            tx: receipt.transaction_hash,
            success,
            applied: record.channels.iter().copied().filter(|id| applied.contains(id)).collect(),
            skipped,
            gas_used: receipt.gas_used,
            fee: u128::from(receipt.gas_used) * receipt.effective_gas_price,
            recovered,
            replacements,
        };
        info!(target: "node::settle", kind = record.kind.as_str(), tx = %report.tx, success, applied = report.applied.len(), skipped = report.skipped.len(), gas_used = report.gas_used, recovered, "settlement mined");
        Ok(report)
    }
}

/// The decoded revert of a failed simulation, or the RPC's message.
fn revert_reason(e: &alloy::contract::Error) -> String {
    x402_protocol::revert::of_contract_error(e).unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{CloseState, StoredVoucher};

    fn record(id: u8, charged: u64, voucher: Option<(u64, u64)>) -> ChannelRecord {
        let mut chain = crate::channel::tests::onchain(10_000);
        chain.paid = U256::ZERO;
        let mut r = ChannelRecord::new(B256::repeat_byte(id), chain);
        r.latest = voucher.map(|(nonce, amount)| StoredVoucher {
            nonce,
            cumulative_amount: U256::from(amount),
            signature: Bytes::from_static(&[1; 65]),
        });
        r.charged = U256::from(charged);
        r.settled_at = 1_000;
        r
    }

    fn ids(items: &[Item]) -> Vec<u8> {
        items.iter().map(|i| i.id.0[0]).collect()
    }

    #[test]
    fn plan_follows_the_policy() {
        let policy = SettlementPolicy {
            threshold: U256::from(500),
            max_age: Duration::from_secs(100),
            ..SettlementPolicy::default()
        };
        let now = 1_050;
        let small = record(1, 100, Some((3, 100)));
        let big = record(2, 600, Some((9, 700)));
        let mut old = record(3, 50, Some((1, 50)));
        old.settled_at = 900;
        let idle = record(4, 0, None);
        let mut exiting_late = record(5, 200, Some((2, 200)));
        exiting_late.chain.exit_at = 5_000;
        exiting_late.status = ChannelStatus::Closing;
        let mut exiting_soon = record(6, 10, Some((1, 10)));
        exiting_soon.chain.exit_at = 2_000;
        exiting_soon.status = ChannelStatus::Closing;
        let mut exit_over = record(7, 10, Some((1, 10)));
        exit_over.chain.exit_at = 1_000;
        let mut exit_nothing_owed = record(8, 0, None);
        exit_nothing_owed.chain.exit_at = 2_000;
        let mut close_requested = record(9, 0, None);
        close_requested.request_close(1_010);
        let mut settled_onchain = record(10, 300, Some((4, 300)));
        settled_onchain.chain.paid = U256::from(300);
        let mut closed = record(11, 900, Some((4, 900)));
        closed.status = ChannelStatus::Closed;
        let records = [
            small,
            big,
            old,
            idle,
            exiting_late,
            exiting_soon,
            exit_over,
            exit_nothing_owed,
            close_requested,
            settled_onchain,
            closed,
        ];

        let p = plan(&records, &policy, now, false);
        assert_eq!(ids(&p.close), vec![6, 5, 9], "exits first, soonest first, then close requests");
        assert_eq!(ids(&p.settle), vec![2, 3], "threshold, then age; largest first");
        let claim = &p.settle[0].claim;
        assert_eq!(
            (claim.nonce, claim.cumulativeAmount, claim.claimed),
            (9, U256::from(700), U256::from(600))
        );
        assert!(p.close[2].claim.signature.is_empty(), "nothing owed: close without a voucher");
        assert_eq!(p.close[2].reason, Reason::CloseRequested);

        let forced = plan(&records, &policy, now, true);
        assert_eq!(ids(&forced.settle), vec![2, 1, 3]);
        assert!(forced.settle.iter().all(|i| i.reason == Reason::Forced));

        let capped = plan(&records, &SettlementPolicy { max_batch: 1, ..policy }, now, true);
        assert_eq!((ids(&capped.close), ids(&capped.settle)), (vec![6], vec![2]));
    }

    #[test]
    fn close_requested_with_a_voucher_claims_it() {
        let mut r = record(1, 400, Some((7, 450)));
        r.close = Some(CloseState { requested_at: 1, authorization_deadline: 0 });
        let p = plan(&[r], &SettlementPolicy::default(), 2, false);
        let c = &p.close[0].claim;
        assert_eq!((c.nonce, c.claimed, c.cumulativeAmount), (7, U256::from(400), U256::from(450)));
        assert!(p.settle.is_empty());
    }

    #[test]
    fn a_close_the_client_may_submit_itself_waits_for_the_grace() {
        let mut r = record(1, 400, Some((7, 450)));
        r.close = Some(CloseState { requested_at: 100, authorization_deadline: 700 });
        let policy = SettlementPolicy::default();
        let grace = CLOSE_GRACE.as_secs();
        let early = plan(std::slice::from_ref(&r), &policy, 101, false);
        assert!(early.close.is_empty(), "the client may close with the authorisation");
        assert_eq!(early.wake_at, Some(100 + grace));
        let due = plan(std::slice::from_ref(&r), &policy, 100 + grace, false);
        assert_eq!(ids(&due.close), vec![1]);
        assert_eq!(due.wake_at, None);
        assert_eq!(ids(&plan(std::slice::from_ref(&r), &policy, 101, true).close), vec![1], "forced");
        // Without an authorisation signed, or once it expired, at once.
        r.close = Some(CloseState { requested_at: 100, authorization_deadline: 0 });
        assert_eq!(ids(&plan(std::slice::from_ref(&r), &policy, 101, false).close), vec![1]);
    }

    #[test]
    fn a_closed_channel_owes_nothing_and_paid_events_are_applied_once() {
        let mut r = record(1, 400, Some((7, 450)));
        assert_eq!(r.unsettled(), U256::from(400));
        assert!(r.paid_onchain(U256::from(300), false, Some(50)));
        assert_eq!((r.unsettled(), r.settled_at), (U256::from(100), 50));
        assert!(!r.paid_onchain(U256::from(200), false, Some(50)), "paid never goes down");
        assert!(r.paid_onchain(U256::from(400), true, None));
        assert_eq!(
            (r.status, r.chain.pending_close, r.unsettled()),
            (ChannelStatus::Closing, true, U256::ZERO)
        );
        assert!(plan(&[r.clone()], &SettlementPolicy::default(), 60, true).close.is_empty());
        assert!(!r.paid_onchain(U256::from(400), true, None));
    }
}
