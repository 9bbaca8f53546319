//! Chain plumbing shared by the x402 Channels node and watcher.
//!
//! - [`sender`]: the durable transaction sender ([`TxSender`]): owns an account's nonces,
//!   stores each signed transaction before broadcasting it, resolves it after a restart, and
//!   replaces a stuck one with higher fees, escalating as its deadline approaches.
//! - [`follower`]: the chain follower ([`LogFollower`]): a contract's logs, with
//!   confirmations and reorg rollback, delivered to a [`LogHandler`].
//! - [`reader`]: reading channels ([`ChainReader`](reader::ChainReader), and
//!   [`RpcChain`](reader::RpcChain) over JSON-RPC); [`channel`]: what it reads.
//! - [`verify`]: the contract's signature rule: ECDSA first, ERC-1271 only otherwise.
//! - [`rpc`]: the JSON-RPC client with a timeout on every call.
//! - [`error`]: the crate's error, [`ChainError`], with its sources kept.
//!
//! Feature flags:
//! - `test-utils`: an in-memory [`ChainReader`](reader::ChainReader) and a store whose syncs can
//!   fail (module `test_utils`).

pub mod channel;
pub mod error;
pub mod follower;
pub mod reader;
pub mod rpc;
pub mod sender;
pub mod verify;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use error::{ChainError, Result};
pub use follower::{LogFollower, LogHandler};
pub use sender::{Outcome, SenderConfig, TxRecord, TxSender};
