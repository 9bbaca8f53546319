//! Prometheus metrics of the node.

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use x402_store::CommitStats;

/// The node's metrics, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Paid requests served.
    pub paid: IntCounter,
    /// Of those, paid from a prepaid credit window with a session token (no signature).
    pub paid_by_session: IntCounter,
    /// Refused payments, by x402 error code.
    pub refused: IntCounterVec,
    /// Time to authorise a payment (decode, checks, signature), in seconds.
    pub verify_seconds: Histogram,
    /// Revenue charged, in token base units, by token.
    pub revenue: CounterVec,
    /// Group commits of the store (one journal `fdatasync` each).
    pub store_flushes: IntGauge,
    /// Checkpoints of the store's journal into sled (flush + fsync, off the request path).
    pub store_checkpoints: IntGauge,
    /// Writes made durable by those commits.
    pub store_synced_writes: IntGauge,
    /// The largest group commit, in writes.
    pub store_max_batch: IntGauge,
    /// The last block the event follower has processed as confirmed.
    pub follower_block: IntGauge,
    /// Reorgs below the confirmation depth, counted once the follower re-read every channel.
    pub reorgs: IntCounter,
    /// Settlement transactions sent (including fee bumps), by kind (`settle`, `close`).
    pub settlement_txs: IntCounterVec,
    /// Channels settled or closed on-chain by the node.
    pub channels_settled: IntCounter,
    /// Batch items dropped because their simulation failed.
    pub claims_dropped: IntCounter,
    /// 402 responses issued (a payment was missing or refused).
    pub payment_required: IntCounter,
    /// Channels the node knows, by status (`open`, `closing`, `closed`), as of the last scrape.
    pub channels: IntGaugeVec,
    /// Charged and not yet paid on-chain, in token base units, by token.
    pub unsettled: GaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let paid = IntCounter::new("x402_requests_paid_total", "Paid requests served").expect("valid metric");
        let paid_by_session = IntCounter::new(
            "x402_requests_paid_by_session_total",
            "Paid requests served from a prepaid credit window (session token, no signature)",
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new("x402_requests_refused_total", "Refused payments by x402 error code"),
            &["reason"],
        )
        .expect("valid metric");
        let verify_seconds = Histogram::with_opts(
            HistogramOpts::new("x402_verify_seconds", "Time to authorise a payment")
                .buckets(vec![1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2, 0.1]),
        )
        .expect("valid metric");
        let revenue = CounterVec::new(
            Opts::new("x402_revenue_base_units_total", "Revenue charged, in token base units"),
            &["token"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let store_flushes =
            gauge("x402_store_flushes", "Group commits of the store (one journal fdatasync each)");
        let store_checkpoints =
            gauge("x402_store_checkpoints", "Checkpoints of the store's journal into sled (flush + fsync)");
        let store_synced_writes = gauge("x402_store_synced_writes", "Writes made durable by group commits");
        let store_max_batch = gauge("x402_store_max_batch", "Largest group commit, in writes");
        let follower_block =
            gauge("x402_follower_block", "Last block processed as confirmed by the event follower");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let reorgs = counter(
            "x402_reorgs_total",
            "Reorgs below the confirmation depth, counted once every channel was re-read",
        );
        let settlement_txs = IntCounterVec::new(
            Opts::new("x402_settlement_transactions_total", "Settlement transactions sent, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let channels_settled = counter("x402_channels_settled_total", "Channels settled or closed on-chain");
        let claims_dropped =
            counter("x402_claims_dropped_total", "Batch items dropped after a failed simulation");
        let payment_required = counter("x402_payment_required_total", "402 responses issued");
        let channels =
            IntGaugeVec::new(Opts::new("x402_channels", "Channels the node knows, by status"), &["status"])
                .expect("valid metric");
        let unsettled = GaugeVec::new(
            Opts::new("x402_unsettled_base_units", "Charged and not yet paid on-chain, in token base units"),
            &["token"],
        )
        .expect("valid metric");
        for c in [
            Box::new(paid.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(payment_required.clone()),
            Box::new(channels.clone()),
            Box::new(unsettled.clone()),
            Box::new(paid_by_session.clone()),
            Box::new(refused.clone()),
            Box::new(verify_seconds.clone()),
            Box::new(revenue.clone()),
            Box::new(store_flushes.clone()),
            Box::new(store_checkpoints.clone()),
            Box::new(store_synced_writes.clone()),
            Box::new(store_max_batch.clone()),
            Box::new(follower_block.clone()),
            Box::new(reorgs.clone()),
            Box::new(settlement_txs.clone()),
            Box::new(channels_settled.clone()),
            Box::new(claims_dropped.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            paid,
            paid_by_session,
            refused,
            verify_seconds,
            revenue,
            store_flushes,
            store_checkpoints,
            store_synced_writes,
            store_max_batch,
            follower_block,
            reorgs,
            settlement_txs,
            channels_settled,
            claims_dropped,
            payment_required,
            channels,
            unsettled,
        }
    }

    /// Registers another collector (e.g. storage statistics) in the node's registry.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// Records the store's group-commit statistics. The mean batch size is
    /// `synced_writes / flushes`.
    pub fn set_store_stats(&self, stats: CommitStats) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_flushes.set(clamp(stats.flushes));
        self.store_checkpoints.set(clamp(stats.checkpoints));
        self.store_synced_writes.set(clamp(stats.synced_writes));
        self.store_max_batch.set(clamp(stats.max_batch));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
