//! The crate's error type.

use std::{io, path::PathBuf, sync::Arc};

/// Everything that can go wrong in a [`KvStore`](crate::KvStore) backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// sled reported an error while opening, reading, writing or flushing.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A filesystem operation on one of the store's files or directories failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"fsync"` or `"open"`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A flush or fsync failed. Writes made after the last successful commit may
    /// not be on disk, and a retried fsync cannot be trusted to report it, so the
    /// store refuses further writes and syncs: reopen it (the log is replayed).
    /// Holds the error of the failed commit, shared by every caller that sees it.
    #[error("commit failed, store must be reopened: {0}")]
    CommitFailed(Arc<Error>),
    /// A put is larger than a journal segment (or its namespace is over 255 bytes, or its
    /// key over 4 GiB): raise `journal_segment_bytes`.
    #[error("entry of {len} bytes does not fit a journal segment of {limit} bytes")]
    EntryTooLarge {
        /// Encoded size of the entry.
        len: u64,
        /// Size of a journal segment.
        limit: u64,
    },
    /// The committer thread stopped before the requested writes became durable.
    #[error("store closed")]
    Closed,
}

impl Error {
    /// Wraps an [`io::Error`] with what was being done and to which path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_context() {
        let cases: [(Error, &str); 3] = [
            (Error::io("fsync", "/x/db", io::Error::other("boom")), "fsync /x/db: boom"),
            (Error::Closed, "store closed"),
            (
                Error::CommitFailed(Arc::new(Error::Closed)),
                "commit failed, store must be reopened: store closed",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
