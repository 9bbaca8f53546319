//! Tests of the devnet on anvil, compiled as one binary: the few-line API pays through a
//! started node, the node configuration written for `x402-node` parses and validates, and the
//! demo story adds up to the unit.

mod api;
mod demo;
