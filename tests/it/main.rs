//! End-to-end tests on anvil, compiled as one binary.

mod client;
mod gateway;
mod settlement;
mod watcher;
