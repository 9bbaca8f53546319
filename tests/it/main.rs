//! End-to-end tests on anvil, compiled as one binary.

mod client;
mod faults;
mod gateway;
mod proxy;
mod settlement;
mod watcher;
