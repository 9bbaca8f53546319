//! End-to-end tests on anvil, compiled as one binary.

mod client;
mod faults;
mod flow;
mod gateway;
mod proxy;
mod settlement;
mod watcher;
