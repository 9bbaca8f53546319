//! Bearer tokens of the node's and the watcher's authenticated endpoints: the rule lives in
//! `x402-protocol` (shared with the watcher).

pub use x402_protocol::auth::*;
