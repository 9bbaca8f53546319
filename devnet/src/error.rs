//! The crate's error type.

use std::{fmt::Display, path::PathBuf};

use alloy::primitives::B256;

/// What can go wrong while starting or driving a devnet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A forge artifact is missing: the contracts were not built.
    #[error(
        "cannot read the forge artifact {path}: {source}; run `forge build` first (after `scripts/setup` and `source scripts/env.sh`)"
    )]
    ArtifactMissing {
        /// The artifact looked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A forge artifact is not what `forge build` writes.
    #[error("invalid forge artifact {path}: {reason}")]
    ArtifactInvalid {
        /// The artifact.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No anvil binary where it was looked for.
    #[error("anvil not found at {0}: run `scripts/setup` (it installs Foundry from npm) or give its path")]
    AnvilMissing(PathBuf),
    /// anvil did not start.
    #[error("cannot start anvil: {0}")]
    Anvil(#[from] alloy::node_bindings::NodeError),
    /// A JSON-RPC call or a transaction failed.
    #[error("{what}: {message}")]
    Chain {
        /// What was asked.
        what: String,
        /// The RPC's or the contract's answer.
        message: String,
    },
    /// A transaction was mined but reverted.
    #[error("{what} reverted in transaction {hash}")]
    Reverted {
        /// What the transaction did.
        what: String,
        /// Its hash.
        hash: B256,
    },
    /// The client SDK failed.
    #[error(transparent)]
    Client(#[from] x402_client::Error),
    /// The node library failed (a node configuration is invalid).
    #[error(transparent)]
    Node(#[from] x402_node::Error),
    /// A gateway or watcher did not start, failed, or did not stop cleanly.
    #[error("the {what}: {message}")]
    Service {
        /// `gateway` or `watcher`.
        what: &'static str,
        /// What happened (for a process, with the end of its log).
        message: String,
    },
    /// An HTTP request to a gateway or a watcher failed or was refused.
    #[error("{what}: {message}")]
    Http {
        /// The request.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// Something awaited did not happen in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// How long was waited.
        secs: u64,
        /// What was waited for.
        what: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The demo's story could not be written out.
    #[error("cannot write the story: {0}")]
    Output(std::io::Error),
    /// The demo's story did not add up.
    #[error("the demo went wrong: {0}")]
    Demo(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Chain`] for a failed `what`.
    pub(crate) fn chain(what: impl Into<String>, e: impl Display) -> Self {
        Self::Chain { what: what.into(), message: e.to_string() }
    }

    /// A [`Error::Io`] on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// A [`Error::Http`] for a failed `what`.
    pub(crate) fn http(what: impl Into<String>, e: impl Display) -> Self {
        Self::Http { what: what.into(), message: e.to_string() }
    }
}
