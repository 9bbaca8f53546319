//! The `x402` command-line tool.

fn main() {}
