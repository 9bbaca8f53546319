//! The benchmark harness of x402 Channels: a load generator written for the `channel` payment
//! protocol, and the figures published in `docs/BENCHMARKS.md`.
//!
//! `x402-bench run` (what `scripts/bench` runs) starts the provider's node as a separate
//! process (`x402-bench serve`: the real [`x402_node`] engine, [`Paywall`](x402_node::middleware::Paywall)
//! and a sled store, with the chain in memory), pre-signs vouchers outside the timed windows,
//! and drives the node over loopback: paid against unpaid requests of the same server, credit
//! windows, many channels, latency at a fixed rate, the store at a million channels, and a
//! soak run. The server reports its own CPU time (`getrusage`), resident memory and group
//! commits, so figures are the server's alone.
//!
//! Modules: [`fixture`] (the deterministic channels and vouchers both processes agree on),
//! [`server`], [`load`], [`sys`] (rusage and memory), [`profile`] (perf, bucketed), [`report`] (JSON, SVG chart, Markdown).
//!
//! This crate has no feature flags.

pub mod batch;
pub mod fixture;
pub mod load;
pub mod profile;
pub mod report;
pub mod server;
pub mod settle;
pub mod sys;
