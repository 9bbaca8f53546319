//! Client of x402 Channels: pays pay-per-request HTTP APIs through EVM payment channels.
//!
//! A [`Client`] answers HTTP 402 `channel` payments by itself: it reads the payment
//! requirements, finds or opens a channel with that provider (funded by a [`DepositPolicy`]),
//! signs the next EIP-712 voucher, retries the request and returns the paid response.
//! [`Limits`] bound what it may spend: a requirement above a limit is an [`Error`], never a
//! silent payment.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use x402_client::{Client, Limits};
//! let key = std::env::var("X402_PRIVATE_KEY")?.parse()?;
//! let limits = Limits::from_units(10_000, 1_000_000, 5_000_000); // max per request, per channel, in total
//! let client = Client::builder(key).rpc("http://127.0.0.1:8545").limits(limits).state_dir("x402-state").build().await?;
//! let weather = client.http().get("http://127.0.0.1:8402/weather").send().await?.text().await?;
//! # let _ = weather; Ok(()) }
//! ```
//!
//! (The same five lines are in the README.)
//!
//! - Concurrency: signing is serialised per channel; requests in flight at once each carry
//!   their own voucher, and one that lost a race (the node answers with a *corrective* 402)
//!   resynchronises to the node's state and retries. The client refuses to resynchronise to a
//!   state claiming more than it ever signed ([`Error::NodeClaimsUnsigned`]).
//! - Ledger: the next voucher builds on what the node *charged* (its receipts and corrective
//!   402s), never on a voucher it did not charge: a failed upstream voids its voucher and the
//!   response carries [`NotCharged`]. [`ClientChannel::remaining`] is the deposit minus the
//!   charges.
//! - Channel choice: a payment goes to the usable channel with the provider that has the most
//!   left (or the one [`ClientBuilder::channel`] names); a channel is opened
//!   ([`DepositPolicy::auto_open`]) or topped up ([`DepositPolicy::auto_top_up`]) only when none
//!   can pay, and [`ClientBuilder::on_event`] hears of each. A channel whose exit a top-up
//!   cancelled stays in use; the chain, not the node's lag, decides.
//! - One payer per state: a state directory records its payer and refuses another key
//!   ([`Error::OtherPayer`]).
//! - Durability: every voucher is stored (and fsynced, with group commit) in the
//!   [`StateStore`] before it is sent, so a restarted client continues above every nonce it
//!   signed.
//! - Session keys: [`ClientBuilder::session_key`] signs vouchers with a key other than the
//!   depositor's; channels name it as their signer.
//! - Gasless opens: [`Client::open_gasless`] signs an EIP-2612 permit or an EIP-3009
//!   authorisation, and a [`Relayer`] (the provider's node, or any funded account) submits it.
//! - Lifecycle: [`Client::open`], [`Client::top_up`], [`Client::close`] (cooperative, via the
//!   node), [`Client::exit`] and [`Client::withdraw`] (unilateral).
//!
//! The `x402` binary is the command-line tool over this library (feature `cli`, on by default;
//! the library alone needs none of its dependencies).
//!
//! Tracing targets: `x402_client::pay`, `x402_client::channel`, `x402_client::chain`.

mod chain;
mod client;
mod error;
#[cfg(test)]
mod ledger_tests;
mod limits;
mod middleware;
mod state;
mod store;

pub use chain::{ChainClient, Funding, IERC20, TxEvent, TxObserver};
pub use client::{
    ChannelEvent, Client, ClientBuilder, Closed, EventHook, GaslessKind, NotCharged, Payment, Relayer,
    Settings, read_402,
};
pub use error::{Error, Result, transport_reason};
pub use limits::{DepositPolicy, Limits};
pub use middleware::PaymentMiddleware;
pub use state::{ChannelStatus, ChannelTerms, ClientChannel, Resync};
pub use store::StateStore;
