//! Shared protocol of x402 Channels: what the provider node and the client agree on.
//!
//! - [`voucher`]: the EIP-712 [`Voucher`] and its domain, hashed exactly as
//!   the `PaymentChannel` contract hashes it, plus signing helpers.
//! - [`wire`]: the x402 v2 wire format for the `channel` scheme (`PAYMENT-REQUIRED`,
//!   `PAYMENT-SIGNATURE` / `X-PAYMENT`, `PAYMENT-RESPONSE`) and its error codes.
//! - [`bindings`]: alloy `sol!` bindings of `IPaymentChannel`, generated from the Solidity
//!   interface in `contracts/src/interfaces/`, so the ABI cannot drift.
//! - [`claim`]: the payee's authorisation of a claim someone else submits (watchers).
//! - [`close`]: the cooperative close request and the provider's close authorisation.
//! - [`open`]: gasless opens (EIP-2612 permit or EIP-3009 authorisation) submitted by a
//!   relayer, and the node's relay endpoint.
//! - [`exact`]: the official x402 `exact` EVM scheme (EIP-3009 `transferWithAuthorization`).
//! - [`network`]: CAIP-2 network identifiers (`eip155:<chainId>`).
//! - [`watch`]: the push API of the watcher (watchtower) that guards channels during exits.
//! - [`auth`]: bearer tokens of the node's and the watcher's authenticated endpoints.
//! - [`revert`]: the one decoder of the contract's reverts.
//!
//! This crate has no feature flags.

pub mod auth;
pub mod bindings;
pub mod claim;
pub mod close;
pub mod exact;
pub mod network;
pub mod open;
pub mod revert;
pub mod voucher;
pub mod watch;
pub mod wire;

mod error;

pub use error::{Error, Result};
pub use network::Network;
pub use voucher::{ChannelDomain, SignedVoucher, Voucher};
