//! The `x402` command line as a process, against the real node on anvil: the channel
//! lifecycle (open, channels, get, topup, close; exit and withdraw), every error class with
//! its exit code, keys from the environment, files, keystores and session keys, curl-like
//! requests, and the configuration's precedence. Every run also checks that no key or password
//! it was given appears in its output.

#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod config;
mod failures;
mod keys;
mod lifecycle;
mod payer;
mod readme;
mod requests;
mod support;
