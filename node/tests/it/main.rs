//! Integration tests of the node, compiled as one binary.

mod differential;
mod paywall;
