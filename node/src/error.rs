//! The crate's one error type.
//!
//! Every fallible function of the library returns [`Error`] (through [`Result`]), with its
//! source kept, so the binary's report shows the whole chain. A payment the node refuses is
//! not an error of the node: it is answered with a [`Refusal`] (or, for the
//! `exact` scheme, an [`ExactRefusal`]), which carries the x402
//! error code; [`Error::Refused`] wraps one only where a background task (settlement, the
//! follower) gives up on a record.

use std::{net::SocketAddr, path::PathBuf};

use alloy::primitives::B256;
use x402_chain::{ChainError, sender::CrashPoint};

use crate::{Refusal, exact::ExactRefusal, routes::RESERVED_PREFIXES};

/// A `Result` whose error defaults to the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the provider node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Config`](crate::config::Config). The message
    /// never quotes the file: a key pasted into it by mistake must not end up in an error
    /// message or a log.
    #[error("invalid config {path}: {message} (line {line}, column {column})")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// The line of the error (1-based; 0 if unknown).
        line: usize,
        /// The column of the error (1-based; 0 if unknown).
        column: usize,
        /// Why, with anything that looks like a private key redacted.
        message: String,
    },
    /// A setting is missing or inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// A command needs something the configuration does not give it (a key, the contract, the
    /// token's EIP-712 domain).
    #[error("{0}")]
    Missing(String),
    /// A route pattern is not valid axum path syntax.
    #[error("route {pattern:?}: {reason}")]
    RoutePattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// Two routes could match the same request equally.
    #[error("route {pattern:?} overlaps route {with:?} for {method}")]
    RouteConflict {
        /// The pattern added last.
        pattern: String,
        /// The route it overlaps (as matched: lower case).
        with: String,
        /// The method both are priced for.
        method: String,
    },
    /// A route is under one of the node's own paths.
    #[error("route {0:?} is under a path the node answers itself ({prefixes})", prefixes = RESERVED_PREFIXES.join(", "))]
    RouteReserved(String),
    /// A route's method name is not a valid HTTP method token.
    #[error("route {pattern:?}: {method:?} is not an HTTP method")]
    RouteMethod {
        /// The pattern.
        pattern: String,
        /// The method given.
        method: String,
    },
    /// A stored channel record does not decode.
    #[error("corrupt channel record {id}: {source}")]
    CorruptRecord {
        /// The channel.
        id: B256,
        /// Why: one of the `Record*` variants (the [`source`](std::error::Error::source) is
        /// this `Box<Error>`).
        #[source]
        source: Box<Error>,
    },
    /// A channel record ends early.
    #[error("truncated record")]
    RecordTruncated,
    /// A channel record's version byte is not one this node reads.
    #[error("unknown record version {0}")]
    RecordVersion(u8),
    /// A channel record's field holds a value no record has.
    #[error("invalid {0}")]
    RecordInvalid(&'static str),
    /// Bytes follow a channel record.
    #[error("{0} trailing bytes")]
    RecordTrailing(usize),
    /// A channel record in the JSON format of earlier versions does not parse.
    #[error("legacy JSON record: {0}")]
    RecordLegacy(#[source] serde_json::Error),
    /// A stored in-flight settlement transaction is corrupt.
    #[error("corrupt settlement record: {0}")]
    SettlementRecord(#[source] serde_json::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] x402_store::Error),
    /// The store could not be opened.
    #[error("cannot open the store in {} (is a gateway running on it?)", dir.display())]
    OpenStore {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: x402_store::Error,
    },
    /// The RPC failed, or the sender could not store or sign a transaction.
    #[error(transparent)]
    Chain(ChainError),
    /// The chain RPC could not be reached to read its chain id.
    #[error("cannot reach the chain RPC")]
    ChainId(#[source] alloy::transports::TransportError),
    /// The node could not catch up with the chain's events before settling.
    #[error("cannot catch up with the chain")]
    CatchUp(#[source] Box<Error>),
    /// Updating a channel record failed (as the request path would refuse it).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// An `exact` payment step failed (a prune of the records, a settlement).
    #[error(transparent)]
    Exact(#[from] ExactRefusal),
    /// A watcher could not be reached or answered with an error.
    #[error("watcher {url}: {message}")]
    Watcher {
        /// The watcher.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The gateway could not bind its address.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another I/O failure of the gateway.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A test stopped a settlement round here, as a crash would (`test-utils` only).
    #[error("injected crash at {0:?}")]
    InjectedCrash(CrashPoint),
}

impl From<ChainError> for Error {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::InjectedCrash(point) => Self::InjectedCrash(point),
            e => Self::Chain(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{error::Error as _, sync::Arc};

    use alloy::primitives::B256;
    use x402_chain::{ChainError, sender::CrashPoint};
    use x402_store::{KvStore, MemoryStore};

    use super::Error;
    use crate::book::{CHANNELS, ChannelBook};

    #[test]
    fn a_corrupt_record_keeps_its_cause() {
        let store = Arc::new(MemoryStore::default());
        let id = B256::repeat_byte(7);
        store.put(CHANNELS, id.as_slice(), &[9, 0, 0]).unwrap();
        let e = ChannelBook::new(store).get(id).unwrap_err();
        assert!(matches!(&e, Error::CorruptRecord { id: at, .. } if *at == id), "{e:?}");
        assert_eq!(e.to_string(), format!("corrupt channel record {id}: unknown record version 9"));
        // The source is the boxed record error.
        let cause = e.source().and_then(|s| s.downcast_ref::<Box<Error>>()).map(|b| &**b);
        assert!(matches!(cause, Some(Error::RecordVersion(9))), "{cause:?}");
    }

    #[test]
    fn a_legacy_record_keeps_the_json_error() {
        let store = Arc::new(MemoryStore::default());
        let id = B256::repeat_byte(8);
        store.put(CHANNELS, id.as_slice(), b"{not json").unwrap();
        let e = ChannelBook::new(store).get(id).unwrap_err();
        let legacy =
            e.source().and_then(|s| s.downcast_ref::<Box<Error>>()).map(|b| &**b).expect("a record error");
        assert!(matches!(legacy, Error::RecordLegacy(_)), "{legacy:?}");
        assert!(legacy.source().is_some_and(|s| s.is::<serde_json::Error>()));
    }

    #[test]
    fn an_injected_crash_is_not_a_chain_error() {
        let e = Error::from(ChainError::InjectedCrash(CrashPoint::BeforeBroadcast));
        assert!(matches!(e, Error::InjectedCrash(CrashPoint::BeforeBroadcast)), "{e:?}");
    }
}
