//! End-to-end tests on anvil, compiled as one binary.

mod client;
mod faults;
mod gateway;
mod proxy;
mod revocation;
mod settlement;
mod watcher;
