#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`Devnet`] / [`DevnetBuilder`]: anvil, the deployments, funded accounts, node
//!   configurations and paying clients.
//! - [`Gateway`] and [`Watchtower`]: the provider's `x402-node` gateway and watcher, in this
//!   process or as processes of the binary ([`Runner`]).
//! - [`chain`]: anvil, deployments and funding as plain functions of a provider, for
//!   harnesses with their own account conventions; [`cheats`]: anvil's time travel, mining,
//!   snapshots and mempool control; [`Artifacts`]: creation bytecode from forge's `out/`.
//! - [`sample_api`]: a small upstream API; [`ledger`]: the gas of every transaction in a range
//!   of blocks, from the receipts.
//! - [`demo`]: the story `scripts/demo` tells.
//!
//! # Feature flags
//!
//! None. The whole crate is test and development tooling: depend on it as a
//! `[dev-dependencies]` entry, so that none of it reaches a production build. It needs anvil
//! (`scripts/setup` installs it into `node_modules/`) and the contracts built by `forge build`.

mod api;
mod artifacts;
pub mod chain;
pub mod cheats;
pub mod demo;
mod devnet;
mod error;
pub mod ledger;
mod services;

use std::path::PathBuf;

pub use api::{LLM_COST_HEADER, llm_cost, sample_api};
pub use artifacts::{Artifacts, CHALLENGE_PERIODS};
pub use chain::ITestStablecoin;
pub use devnet::{CLIENT_LIMITS, DEFAULT_FUNDS, Devnet, DevnetBuilder, NodeFiles, TOKEN_UNIT};
pub use error::{Error, Result};
pub use services::{
    Gateway, Process, Runner, Watchtower, free_port, node_config, wait_for, with_provider_key, write_key,
};

/// The price of `GET /weather` in the node configurations made here, in base units of the test
/// stablecoin: 0.001 of a token.
pub const PRICE: u64 = 1_000;

/// The most a request to the sample `/llm` route may cost (`upto` pricing: the upstream reports
/// the actual cost, [`llm_cost`]).
pub const LLM_MAX_PRICE: u64 = 5_000;

/// The admin token of the node configurations made here (`/admin` endpoints). A test value.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The workspace root (forge's `out/` and the npm-installed anvil are looked for there by
/// default).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
