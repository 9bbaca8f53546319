//! End-to-end tests on anvil, compiled as one binary.

mod client;
mod exact;
mod facilitator;
mod faults;
mod flow;
mod gateway;
mod proxy;
mod revocation;
mod settlement;
mod watcher;
