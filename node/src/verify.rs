//! The contract's signature rule: lives in `x402-chain` (shared with the watcher and the
//! client).

pub use x402_chain::verify::*;
