//! Chain plumbing shared by the x402 Channels node and watcher.
//!
//! - [`sender`]: the durable transaction sender ([`TxSender`]): owns an account's nonces,
//!   stores each signed transaction before broadcasting it, resolves it after a restart, and
//!   replaces a stuck one with higher fees, escalating as its deadline approaches.
//! - [`follower`]: the chain follower ([`LogFollower`]): a contract's logs, with
//!   confirmations and reorg rollback, delivered to a [`LogHandler`].
//! - [`rpc`]: the JSON-RPC client with a timeout on every call.
//! - [`error`]: the crate's error, [`ChainError`], with its sources kept.
//!
//! This crate has no feature flags.

pub mod error;
pub mod follower;
pub mod rpc;
pub mod sender;

pub use error::{ChainError, Result};
pub use follower::{LogFollower, LogHandler};
pub use sender::{Outcome, SenderConfig, TxRecord, TxSender};
