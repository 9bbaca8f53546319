//! End-to-end tests on anvil, compiled as one binary.

mod client;
mod crash;
mod exact;
mod facilitator;
mod faults;
mod flow;
mod gateway;
mod gateway_binary;
// The gateway's tests in `node` (which cannot depend on this crate) share this upstream.
#[path = "../../node/tests/it/lenient.rs"]
mod lenient;
mod process;
mod proxy;
mod revocation;
mod secrets;
mod settlement;
mod watcher;
