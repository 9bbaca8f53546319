//! The durable transaction sender: the one way the node, the watcher and the relay send
//! transactions.
//!
//! A [`TxSender`] owns one account's nonces. Each transaction:
//! 1. gets the account's next nonce (the highest of the chain's pending count and what this
//!    sender already used), its gas limit and EIP-1559 fees;
//! 2. is signed and stored ([`TxRecord`], with every signed version) and the store is synced
//!    *before* it is broadcast, so a process killed at any point finds it on restart
//!    ([`TxSender::in_flight`]) and resolves it instead of signing something new for the same
//!    nonce. A first broadcast the node refuses outright (no funds, fees below its floor) is
//!    forgotten and its nonce reused: it could never be mined as it is;
//! 3. is waited for ([`TxSender::wait`]): re-broadcast if it left the mempool, replaced with
//!    higher fees (same nonce, so at most one version can be mined) if it is not mined in time,
//!    faster and with bigger bumps as its deadline approaches ([`replacement`]); a
//!    transaction still not mined when its deadline passes raises an alert (a metric and an
//!    error log), once.
//!
//! Nodes refuse a replacement that does not raise both fee fields by at least 10%; every bump
//! here raises both by at least 12.5%.
//!
//! Tracing target: `chain::sender`.

use std::{sync::Arc, time::Duration};

use alloy::{
    consensus::Transaction as _,
    network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder, eip2718::Encodable2718},
    primitives::{Address, B256, Bytes},
    providers::{DynProvider, Provider},
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};
use x402_store::KvStore;

use crate::error::{ChainError, Result, rpc};

/// The store namespace of transactions in flight; keys are the account (20 bytes) followed by
/// the nonce (8 bytes, big-endian), so several senders may share one store.
pub const OUTBOX: &str = "outbox";

/// Where a test may make a send stop as if the process had been killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the transaction was stored, before it was broadcast.
    BeforeBroadcast,
    /// After it was broadcast, before its receipt was seen.
    AfterBroadcast,
}

/// How the sender prices and replaces transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// Replace a transaction not mined after this long with one paying higher fees (shorter as
    /// its deadline approaches, see [`replacement`]).
    pub resend_after: Duration,
    /// How often to look for a receipt.
    pub receipt_poll: Duration,
    /// Gas limit: the estimate plus this share of it (percent) plus 20,000.
    pub gas_margin_percent: u64,
}

impl SenderConfig {
    /// The defaults: replace after 60 s, look for a receipt every 500 ms, 25% gas margin.
    pub const DEFAULT: Self = Self {
        resend_after: Duration::from_secs(60),
        receipt_poll: Duration::from_millis(500),
        gas_margin_percent: 25,
    };
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A transaction's EIP-1559 fees, in wei per gas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fees {
    /// `maxFeePerGas`.
    pub max_fee_per_gas: u128,
    /// `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: u128,
}

/// How close a transaction is to its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// No deadline, or more than four resend intervals away.
    Normal,
    /// Within four resend intervals of its deadline.
    Urgent,
    /// Within one resend interval of its deadline, or past it.
    Critical,
}

impl Urgency {
    /// The urgency at unix time `now` of a transaction due by `deadline`.
    pub fn at(now: u64, deadline: Option<u64>, resend_after: Duration) -> Self {
        let Some(deadline) = deadline else { return Self::Normal };
        let left = deadline.saturating_sub(now);
        let interval = resend_after.as_secs().max(1);
        if left <= interval {
            Self::Critical
        } else if left <= interval.saturating_mul(4) {
            Self::Urgent
        } else {
            Self::Normal
        }
    }

    /// How long to wait for a version to be mined before replacing it.
    pub fn resend_after(self, base: Duration) -> Duration {
        match self {
            Self::Normal => base,
            Self::Urgent => base / 2,
            Self::Critical => base / 4,
        }
    }

    /// The fee increase of a replacement, in eighths (12.5%, 50%, 100%).
    const fn bump_eighths(self) -> u128 {
        match self {
            Self::Normal => 1,
            Self::Urgent => 4,
            Self::Critical => 8,
        }
    }
}

/// The fees of the first version of a transaction: the network's estimate, doubled when its
/// deadline is already within one resend interval.
pub fn initial(network: Fees, urgency: Urgency) -> Fees {
    if urgency == Urgency::Critical {
        let priority = network.max_priority_fee_per_gas.saturating_mul(2);
        Fees {
            max_fee_per_gas: network.max_fee_per_gas.saturating_mul(2).max(priority),
            max_priority_fee_per_gas: priority,
        }
    } else {
        network
    }
}

/// The fees of a replacement of a version that paid `last`: both fields raised by at least
/// 12.5% (nodes require 10%), by 50% when urgent and 100% when critical, and never below the
/// network's current estimate `network`. The priority fee never exceeds the fee cap.
pub fn replacement(last: Fees, network: Fees, urgency: Urgency) -> Fees {
    let eighths = urgency.bump_eighths();
    let bump = |old: u128| old.saturating_add((old.saturating_mul(eighths) / 8).max(1));
    let priority = bump(last.max_priority_fee_per_gas).max(network.max_priority_fee_per_gas);
    let max_fee = bump(last.max_fee_per_gas).max(network.max_fee_per_gas).max(priority);
    Fees { max_fee_per_gas: max_fee, max_priority_fee_per_gas: priority }
}

/// One signed version of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    /// Its hash.
    pub hash: B256,
    /// The signed EIP-2718 bytes, as broadcast.
    pub raw: Bytes,
    /// Its fees.
    pub fees: Fees,
    /// When it was signed (unix seconds).
    pub sent_at: u64,
}

/// A transaction in flight: every signed version of it (fee bumps share the nonce), stored
/// before the first broadcast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxRecord {
    /// The account's nonce it uses.
    pub nonce: u64,
    /// The request, with nonce, chain id and gas limit, without fees.
    pub request: TransactionRequest,
    /// What the caller needs to act on its outcome after a restart (e.g. the channels a batch
    /// settles).
    pub context: serde_json::Value,
    /// The unix time by which it must be mined, if any.
    pub deadline: Option<u64>,
    /// Every signed version, oldest first.
    pub versions: Vec<SignedTx>,
    /// Whether the missed deadline was already reported.
    #[serde(default)]
    pub alerted: bool,
}

impl TxRecord {
    /// The latest version.
    pub fn last(&self) -> Option<&SignedTx> {
        self.versions.last()
    }

    /// How many times it was replaced with higher fees.
    pub fn replacements(&self) -> usize {
        self.versions.len().saturating_sub(1)
    }
}

/// How a transaction in flight ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// One version was mined (successfully or not: see the receipt's status).
    Mined {
        /// The record, as finally stored.
        record: TxRecord,
        /// The receipt of the version mined.
        receipt: Box<TransactionReceipt>,
    },
    /// Another transaction of the account used the nonce (none of the versions was mined).
    Replaced(TxRecord),
    /// Not mined within the wait's limit; it stays in flight (see [`TxSender::wait_for`]).
    Pending(TxRecord),
}

/// The sender's counters; register them in a Prometheus registry to export them.
#[derive(Clone, Debug)]
pub struct SenderMetrics {
    /// Versions broadcast (first sends and fee bumps).
    pub sent: prometheus::IntCounter,
    /// Fee bumps.
    pub replaced: prometheus::IntCounter,
    /// Transactions not mined by their deadline.
    pub missed_deadline: prometheus::IntCounter,
}

impl SenderMetrics {
    /// Counters labelled with the sender's `role` (`settler`, `watcher`, `relay`).
    pub fn new(role: &str) -> Self {
        let counter = |name: &str, help: &str| {
            prometheus::IntCounter::with_opts(prometheus::Opts::new(name, help).const_label("sender", role))
                .expect("valid metric")
        };
        Self {
            sent: counter("x402_txs_sent_total", "Transactions broadcast, including fee bumps"),
            replaced: counter("x402_tx_replacements_total", "Transactions replaced with higher fees"),
            missed_deadline: counter(
                "x402_tx_missed_deadlines_total",
                "Transactions not mined by their deadline (alert)",
            ),
        }
    }

    /// The counters, to register in a Prometheus registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.sent.clone()),
            Box::new(self.replaced.clone()),
            Box::new(self.missed_deadline.clone()),
        ]
    }

    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        self.collectors().into_iter().try_for_each(|c| registry.register(c))
    }
}

/// Sends one account's transactions durably. See the [module docs](self).
#[derive(Debug)]
pub struct TxSender<S> {
    provider: DynProvider,
    wallet: EthereumWallet,
    address: Address,
    chain_id: u64,
    store: Arc<S>,
    config: SenderConfig,
    role: &'static str,
    /// The next nonce this sender will use, once known; held while a transaction is signed,
    /// stored and broadcast, so that nonces are handed out one at a time.
    next_nonce: tokio::sync::Mutex<Option<u64>>,
    metrics: SenderMetrics,
    crash: Option<CrashPoint>,
}

impl<S: KvStore> TxSender<S> {
    /// A sender of `key`'s transactions on chain `chain_id` through `provider`, keeping them in
    /// `store`. `role` names it in logs and metrics.
    pub fn new(
        provider: DynProvider,
        key: PrivateKeySigner,
        chain_id: u64,
        store: Arc<S>,
        config: SenderConfig,
        role: &'static str,
    ) -> Self {
        Self {
            provider,
            address: key.address(),
            wallet: EthereumWallet::from(key),
            chain_id,
            store,
            config,
            role,
            next_nonce: tokio::sync::Mutex::new(None),
            metrics: SenderMetrics::new(role),
            crash: None,
        }
    }

    /// Makes sends stop at `point` as if the process had been killed there.
    pub const fn crash_at(mut self, point: Option<CrashPoint>) -> Self {
        self.crash = point;
        self
    }

    /// The account.
    pub const fn address(&self) -> Address {
        self.address
    }

    /// The provider.
    pub const fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The settings.
    pub const fn config(&self) -> &SenderConfig {
        &self.config
    }

    /// The counters.
    pub const fn metrics(&self) -> &SenderMetrics {
        &self.metrics
    }

    /// The transactions of this account left in flight (by a crash, or still pending), by
    /// nonce.
    pub fn in_flight(&self) -> Result<Vec<TxRecord>> {
        let prefix = self.address.as_slice();
        let mut records = self
            .store
            .list(OUTBOX)?
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| {
                serde_json::from_slice::<TxRecord>(&v)
                    .map_err(|source| ChainError::Corrupt { what: "transaction record", source })
            })
            .collect::<Result<Vec<_>>>()?;
        records.sort_by_key(|r| r.nonce);
        Ok(records)
    }

    /// Signs `request` (its `to`, `input` and `value`; the sender fills in the rest), stores it
    /// durably, then broadcasts it. `context` is kept with it for the caller; `deadline` (unix
    /// seconds) is when it must be mined by.
    ///
    /// Nothing is stored, and no nonce used, if the gas estimate fails (e.g. the call would
    /// revert) or signing fails.
    pub async fn send(
        &self,
        request: TransactionRequest,
        context: serde_json::Value,
        deadline: Option<u64>,
    ) -> Result<TxRecord> {
        let mut next = self.next_nonce.lock().await;
        let pending = self
            .provider
            .get_transaction_count(self.address)
            .pending()
            .await
            .map_err(rpc("eth_getTransactionCount"))?;
        let stored = self.in_flight()?.last().map_or(0, |r| r.nonce + 1);
        let nonce = pending.max(stored).max(next.unwrap_or(0));
        let request = request.with_from(self.address).with_nonce(nonce).with_chain_id(self.chain_id);
        let request = if request.gas.is_some() {
            request
        } else {
            let gas = self.provider.estimate_gas(request.clone()).await.map_err(rpc("eth_estimateGas"))?;
            let margin = gas.saturating_mul(self.config.gas_margin_percent) / 100;
            request.with_gas_limit(gas.saturating_add(margin).saturating_add(20_000))
        };
        let urgency = Urgency::at(unix_now(), deadline, self.config.resend_after);
        let fees = initial(self.network_fees().await?, urgency);
        let tx = self.sign(&request, fees).await?;
        let record = TxRecord { nonce, request, context, deadline, versions: vec![tx], alerted: false };
        self.persist(&record).await?;
        *next = Some(nonce + 1);
        if self.crash == Some(CrashPoint::BeforeBroadcast) {
            return Err(ChainError::InjectedCrash(CrashPoint::BeforeBroadcast));
        }
        self.metrics.sent.inc();
        match self.provider.send_raw_transaction(&record.versions[0].raw).await {
            Ok(_) => {}
            // The node refused it (no funds, fees below its floor, a nonce it holds another
            // transaction for): it cannot be mined as it is, so it is forgotten and its nonce
            // left for the next transaction. The caller retries later.
            Err(e) if e.as_error_resp().is_some() => {
                *next = None;
                drop(next);
                self.forget(nonce).await?;
                return Err(rpc("eth_sendRawTransaction")(e));
            }
            // It may have reached the node: it stays in flight, and waiting sorts it out.
            Err(e) => {
                warn!(target: "chain::sender", sender = self.role, tx = %record.versions[0].hash, error = %e, "broadcast failed; it will be re-sent");
            }
        }
        drop(next);
        info!(
            target: "chain::sender",
            sender = self.role,
            nonce,
            tx = %record.versions[0].hash,
            max_fee_per_gas = fees.max_fee_per_gas,
            ?deadline,
            "transaction sent"
        );
        if self.crash == Some(CrashPoint::AfterBroadcast) {
            return Err(ChainError::InjectedCrash(CrashPoint::AfterBroadcast));
        }
        Ok(record)
    }

    /// Waits until one version of `record` is mined or its nonce is used by another
    /// transaction, re-broadcasting and replacing it as needed. Returns an error only if the
    /// RPC or the store fails; the record stays in flight then.
    pub async fn wait(&self, record: TxRecord) -> Result<Outcome> {
        self.wait_for(record, None).await
    }

    /// Like [`wait`](Self::wait), but returns [`Outcome::Pending`] after `limit` (the record
    /// stays in flight and can be waited for again, e.g. on the next round).
    pub async fn wait_for(&self, mut record: TxRecord, limit: Option<Duration>) -> Result<Outcome> {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(receipt) = self.receipt(&record).await? {
                return self.mined(record, receipt).await;
            }
            let mined_nonce = self
                .provider
                .get_transaction_count(self.address)
                .latest()
                .await
                .map_err(rpc("eth_getTransactionCount"))?;
            if mined_nonce > record.nonce {
                // The nonce was used. The block may have landed between the receipt lookup
                // and the nonce read, so look again before concluding another transaction of
                // this account used it.
                for _ in 0..5 {
                    if let Some(receipt) = self.receipt(&record).await? {
                        return self.mined(record, receipt).await;
                    }
                    tokio::time::sleep(self.config.receipt_poll).await;
                }
                warn!(target: "chain::sender", sender = self.role, nonce = record.nonce, "nonce used by another transaction of the account");
                self.forget(record.nonce).await?;
                return Ok(Outcome::Replaced(record));
            }
            let now = unix_now();
            self.check_deadline(&mut record, now).await?;
            let last = record.last().cloned().ok_or_else(|| ChainError::Build("no signed version".into()))?;
            let urgency = Urgency::at(now, record.deadline, self.config.resend_after);
            if now.saturating_sub(last.sent_at) >= urgency.resend_after(self.config.resend_after).as_secs() {
                let fees = replacement(last.fees, self.network_fees().await?, urgency);
                let tx = self.sign(&record.request, fees).await?;
                record.versions.push(tx.clone());
                self.persist(&record).await?;
                warn!(
                    target: "chain::sender",
                    sender = self.role,
                    nonce = record.nonce,
                    tx = %tx.hash,
                    max_fee_per_gas = fees.max_fee_per_gas,
                    max_priority_fee_per_gas = fees.max_priority_fee_per_gas,
                    ?urgency,
                    "transaction not mined in time; replaced with higher fees"
                );
                self.metrics.replaced.inc();
                self.broadcast(&tx).await;
            } else if self
                .provider
                .get_transaction_by_hash(last.hash)
                .await
                .map_err(rpc("eth_getTransactionByHash"))?
                .is_none()
            {
                // Dropped from the mempool (or never sent, if the process died before).
                self.broadcast(&last).await;
            }
            if limit.is_some_and(|limit| started.elapsed() >= limit) {
                return Ok(Outcome::Pending(record));
            }
            tokio::time::sleep(self.config.receipt_poll).await;
        }
    }

    /// Sends `request` and waits for it: [`send`](Self::send) then [`wait`](Self::wait).
    pub async fn send_and_wait(
        &self,
        request: TransactionRequest,
        context: serde_json::Value,
        deadline: Option<u64>,
    ) -> Result<Outcome> {
        let record = self.send(request, context, deadline).await?;
        self.wait(record).await
    }

    /// Raises the alert once if `record`'s deadline has passed.
    async fn check_deadline(&self, record: &mut TxRecord, now: u64) -> Result<()> {
        if let Some(deadline) = record.deadline.filter(|d| now >= *d && !record.alerted) {
            record.alerted = true;
            self.persist(record).await?;
            self.metrics.missed_deadline.inc();
            error!(
                target: "chain::sender",
                sender = self.role,
                account = %self.address,
                nonce = record.nonce,
                deadline,
                versions = record.versions.len(),
                max_fee_per_gas = record.last().map(|t| t.fees.max_fee_per_gas),
                "transaction not mined by its deadline"
            );
        }
        Ok(())
    }

    async fn mined(&self, record: TxRecord, receipt: TransactionReceipt) -> Result<Outcome> {
        self.forget(record.nonce).await?;
        if record.alerted {
            warn!(target: "chain::sender", sender = self.role, nonce = record.nonce, tx = %receipt.transaction_hash, "transaction mined after its deadline");
        }
        Ok(Outcome::Mined { record, receipt: Box::new(receipt) })
    }

    async fn network_fees(&self) -> Result<Fees> {
        let fees = self.provider.estimate_eip1559_fees().await.map_err(rpc("eth_feeHistory"))?;
        Ok(Fees {
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        })
    }

    async fn sign(&self, request: &TransactionRequest, fees: Fees) -> Result<SignedTx> {
        let envelope = request
            .clone()
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas)
            .build(&self.wallet)
            .await
            .map_err(|e| match e {
                alloy::network::TransactionBuilderError::Signer(e) => ChainError::Sign(e),
                other => ChainError::Build(other.to_string()),
            })?;
        debug_assert_eq!(envelope.nonce(), request.nonce.unwrap_or_default());
        Ok(SignedTx {
            hash: *envelope.tx_hash(),
            raw: Bytes::from(envelope.encoded_2718()),
            fees,
            sent_at: unix_now(),
        })
    }

    fn key(&self, nonce: u64) -> Vec<u8> {
        let mut key = self.address.to_vec();
        key.extend_from_slice(&nonce.to_be_bytes());
        key
    }

    async fn persist(&self, record: &TxRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record)
            .map_err(|source| ChainError::Corrupt { what: "transaction record", source })?;
        self.store.put(OUTBOX, &self.key(record.nonce), &bytes)?;
        self.store.sync().await?;
        Ok(())
    }

    async fn forget(&self, nonce: u64) -> Result<()> {
        self.store.remove(OUTBOX, &self.key(nonce))?;
        self.store.sync().await?;
        Ok(())
    }

    /// Broadcasts a signed version. Errors are logged, not returned: it may already be known,
    /// mined, or replaced, which waiting for its receipt sorts out.
    async fn broadcast(&self, tx: &SignedTx) {
        self.metrics.sent.inc();
        if let Err(e) = self.provider.send_raw_transaction(&tx.raw).await {
            warn!(target: "chain::sender", sender = self.role, tx = %tx.hash, error = %e, "broadcast refused (may already be known)");
        }
    }

    /// The receipt of whichever version was mined, if any.
    async fn receipt(&self, record: &TxRecord) -> Result<Option<TransactionReceipt>> {
        for tx in record.versions.iter().rev() {
            if let Some(receipt) = self
                .provider
                .get_transaction_receipt(tx.hash)
                .await
                .map_err(rpc("eth_getTransactionReceipt"))?
            {
                return Ok(Some(receipt));
            }
        }
        Ok(None)
    }
}

/// The current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn urgency_follows_the_deadline() {
        let cases = [
            (None, Urgency::Normal),
            (Some(1_000 + 241), Urgency::Normal),
            (Some(1_000 + 240), Urgency::Urgent),
            (Some(1_000 + 61), Urgency::Urgent),
            (Some(1_000 + 60), Urgency::Critical),
            (Some(1_000), Urgency::Critical),
            (Some(10), Urgency::Critical),
        ];
        for (deadline, expected) in cases {
            assert_eq!(Urgency::at(1_000, deadline, MINUTE), expected, "{deadline:?}");
        }
        assert_eq!(Urgency::Normal.resend_after(MINUTE), MINUTE);
        assert_eq!(Urgency::Urgent.resend_after(MINUTE), MINUTE / 2);
        assert_eq!(Urgency::Critical.resend_after(MINUTE), MINUTE / 4);
    }

    #[test]
    fn replacements_escalate() {
        let last = Fees { max_fee_per_gas: 800, max_priority_fee_per_gas: 80 };
        let quiet = Fees { max_fee_per_gas: 10, max_priority_fee_per_gas: 1 };
        assert_eq!(
            replacement(last, quiet, Urgency::Normal),
            Fees { max_fee_per_gas: 900, max_priority_fee_per_gas: 90 }
        );
        assert_eq!(
            replacement(last, quiet, Urgency::Urgent),
            Fees { max_fee_per_gas: 1_200, max_priority_fee_per_gas: 120 }
        );
        assert_eq!(
            replacement(last, quiet, Urgency::Critical),
            Fees { max_fee_per_gas: 1_600, max_priority_fee_per_gas: 160 }
        );
        // A spike: the network's estimate wins over the bump.
        let spike = Fees { max_fee_per_gas: 50_000, max_priority_fee_per_gas: 100 };
        assert_eq!(
            replacement(last, spike, Urgency::Normal),
            Fees { max_fee_per_gas: 50_000, max_priority_fee_per_gas: 100 }
        );
        // Zero fees still move.
        let zero = Fees { max_fee_per_gas: 0, max_priority_fee_per_gas: 0 };
        assert_eq!(
            replacement(zero, zero, Urgency::Normal),
            Fees { max_fee_per_gas: 1, max_priority_fee_per_gas: 1 }
        );
        assert_eq!(initial(last, Urgency::Urgent), last);
        assert_eq!(
            initial(last, Urgency::Critical),
            Fees { max_fee_per_gas: 1_600, max_priority_fee_per_gas: 160 }
        );
    }

    fn fees() -> impl Strategy<Value = Fees> {
        (0u128..1 << 100, 0u128..1 << 100)
            .prop_map(|(a, b)| Fees { max_fee_per_gas: a.max(b), max_priority_fee_per_gas: a.min(b) })
    }

    fn urgency() -> impl Strategy<Value = Urgency> {
        prop_oneof![Just(Urgency::Normal), Just(Urgency::Urgent), Just(Urgency::Critical)]
    }

    proptest! {
        /// Every replacement is one a node accepts (both fields at least +10%), pays at least
        /// what the network asks, keeps the priority fee under the cap, and a more urgent one
        /// never pays less.
        #[test]
        fn replacement_is_always_accepted(last in fees(), network in fees(), u in urgency()) {
            let next = replacement(last, network, u);
            let ten_percent = |old: u128| old + (old / 10).max(1);
            prop_assert!(next.max_fee_per_gas >= ten_percent(last.max_fee_per_gas));
            prop_assert!(next.max_priority_fee_per_gas >= ten_percent(last.max_priority_fee_per_gas));
            prop_assert!(next.max_fee_per_gas >= network.max_fee_per_gas);
            prop_assert!(next.max_priority_fee_per_gas >= network.max_priority_fee_per_gas);
            prop_assert!(next.max_priority_fee_per_gas <= next.max_fee_per_gas);
            let calmer = match u { Urgency::Critical => Urgency::Urgent, _ => Urgency::Normal };
            let less = replacement(last, network, calmer);
            prop_assert!(next.max_fee_per_gas >= less.max_fee_per_gas);
        }

        /// However many times a stuck transaction is replaced, each version is accepted over the
        /// one before.
        #[test]
        fn chains_of_replacements_stay_valid(start in fees(), steps in proptest::collection::vec((fees(), urgency()), 1..12)) {
            let mut last = start;
            for (network, u) in steps {
                let next = replacement(last, network, u);
                prop_assert!(next.max_fee_per_gas > last.max_fee_per_gas);
                prop_assert!(next.max_priority_fee_per_gas > last.max_priority_fee_per_gas);
                last = next;
            }
        }
    }
}
