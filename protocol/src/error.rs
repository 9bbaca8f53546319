/// Errors of the protocol crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A header value was not valid base64.
    #[error("invalid base64 in header: {0}")]
    Base64(#[from] base64::DecodeError),
    /// A header decoded to invalid JSON, or JSON of the wrong shape.
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    /// A header was larger than [`crate::wire::MAX_HEADER_LEN`].
    #[error("header too large: {len} bytes (max {max})")]
    HeaderTooLarge {
        /// The header's length.
        len: usize,
        /// The maximum accepted.
        max: usize,
    },
    /// A network identifier was not `eip155:<chainId>`.
    #[error("invalid network {0:?}: expected eip155:<chainId>")]
    InvalidNetwork(String),
    /// A signature was not 65 bytes.
    #[error("invalid signature length {0}: expected 65")]
    SignatureLength(usize),
    /// A gasless open cannot be built from these inputs.
    #[error("gasless open: {0}")]
    Gasless(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signer(#[from] alloy::signers::Error),
}

/// Result alias of the protocol crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
