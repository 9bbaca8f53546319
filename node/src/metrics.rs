//! Prometheus metrics of the node.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The node's metrics, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Paid requests served.
    pub paid: IntCounter,
    /// Refused payments, by x402 error code.
    pub refused: IntCounterVec,
    /// Time to authorise a payment (decode, checks, signature), in seconds.
    pub verify_seconds: Histogram,
    /// Revenue charged, in token base units, by token.
    pub revenue: CounterVec,
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
        for c in [
            Box::new(paid.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
            Box::new(verify_seconds.clone()),
            Box::new(revenue.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self { registry, paid, refused, verify_seconds, revenue }
    }

    /// Registers another collector (e.g. storage statistics) in the node's registry.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
