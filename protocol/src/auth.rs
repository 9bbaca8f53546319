//! Bearer tokens of the node's and the watcher's authenticated endpoints: one rule for what a
//! token may be, and one constant-time check of what a request presents.

use alloy::primitives::{B256, keccak256};
use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// The shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Checks that `token` is usable as a bearer token: at least [`MIN_TOKEN_LEN`] printable
/// ASCII characters without spaces (what an `Authorization` header can carry unchanged).
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!("a bearer token needs at least {MIN_TOKEN_LEN} characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a bearer token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// A configured bearer token, kept only as its hash: comparing hashes in constant time does
/// not leak the token's length either.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(B256);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// The token `token`.
    pub fn new(token: &str) -> Self {
        Self(keccak256(token.as_bytes()))
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(keccak256(presented.as_bytes()).as_slice().ct_eq(self.0.as_slice()))
    }

    /// Whether `headers` carry `Authorization: Bearer <token>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        self.matches(presented)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn tokens_and_headers() {
        assert!(check_token("0123456789abcdef").is_ok());
        for bad in ["short", "0123456789 abcdef", "0123456789abcdé", "0123456789abcde\n"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        let token = BearerToken::new("0123456789abcdef");
        let mut headers = HeaderMap::new();
        assert!(!token.authorizes(&headers));
        for (value, ok) in [
            ("Bearer 0123456789abcdef", true),
            ("Bearer 0123456789abcdeF", false),
            ("bearer 0123456789abcdef", false),
            ("0123456789abcdef", false),
            ("Bearer ", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(token.authorizes(&headers), ok, "{value}");
        }
        assert!(!format!("{token:?}").contains("0123"));
    }
}
