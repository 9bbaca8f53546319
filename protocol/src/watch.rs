//! The push API of the watcher (watchtower).
//!
//! A provider pushes the vouchers it accepted to a watcher, each with the channel's parameters
//! and the provider's (payee's) EIP-712 `ClaimAuthorization(channelId, nonce, claimed)` at what
//! it charged (see [`crate::claim`]). The watcher keeps, per channel, the verified claim
//! paying the payee the most and submits it with `settleAuthorized` if the payer starts a
//! unilateral exit while the provider is offline. Only the payee's signature makes a claim by
//! someone else valid, so the watcher can claim exactly what the provider charged, never more.
//!
//! - `POST` [`WATCH_PATH`] with `Authorization: Bearer <token>` and a [`WatchRequest`] body:
//!   `200` with a [`WatchResponse`] holding one [`WatchResult`] per voucher, in request order,
//!   once every stored voucher is durable. `400` for a malformed body (`413` above 1 MiB),
//!   `401` without the token, `503` if the watcher's storage failed; each with an
//!   [`ApiError`] body.
//! - `GET` [`CHANNELS_PATH`] with the token: `200` with a list of [`WatchedChannel`].
//!
//! Amounts are decimal strings of token base units, as in the x402 wire format.
//!
//! ```
//! use alloy::primitives::{B256, Bytes, U256};
//! use x402_protocol::{
//!     bindings::IPaymentChannel::ChannelParams,
//!     watch::{WatchRequest, WatchedVoucher},
//! };
//!
//! let request = WatchRequest {
//!     vouchers: vec![WatchedVoucher {
//!         channel_id: B256::repeat_byte(0x11),
//!         nonce: 3,
//!         cumulative_amount: U256::from(3_000),
//!         signature: Bytes::from(vec![0xab; 65]),
//!         claimed: U256::from(2_500),
//!         payee_signature: Bytes::from(vec![0xcd; 65]),
//!         params: ChannelParams::default(),
//!     }],
//! };
//! let json = serde_json::to_value(&request).unwrap();
//! assert_eq!(json["vouchers"][0]["cumulativeAmount"], "3000");
//! assert_eq!(json["vouchers"][0]["claimed"], "2500");
//! ```

use std::fmt;

use alloy::primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Serialize};

use crate::{SignedVoucher, Voucher, bindings::IPaymentChannel::ChannelParams, wire::u256_dec};

/// Path of the push endpoint (`POST`).
pub const WATCH_PATH: &str = "/v1/vouchers";
/// Path of the listing of watched channels (`GET`).
pub const CHANNELS_PATH: &str = "/v1/channels";
/// The most vouchers one [`WatchRequest`] may carry.
pub const MAX_VOUCHERS_PER_REQUEST: usize = 1024;

/// A batch of vouchers pushed to a watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchRequest {
    /// The vouchers, at most [`MAX_VOUCHERS_PER_REQUEST`]. Several may name the same channel.
    pub vouchers: Vec<WatchedVoucher>,
}

/// One voucher pushed to a watcher, with what the payee claims with it and the payee's
/// authorisation of that claim. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchedVoucher {
    /// The channel.
    pub channel_id: B256,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount (the signed ceiling).
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// The voucher signer's signature.
    pub signature: Bytes,
    /// The total the payee claims with it: what the provider charged, at most
    /// `cumulative_amount`.
    #[serde(with = "u256_dec")]
    pub claimed: U256,
    /// The payee's signature over `ClaimAuthorization(channelId, nonce, claimed)`.
    pub payee_signature: Bytes,
    /// The channel's parameters; they must hash to `channel_id`.
    pub params: ChannelParams,
}

impl WatchedVoucher {
    /// The voucher with its signature.
    pub fn voucher(&self) -> SignedVoucher {
        SignedVoucher {
            voucher: Voucher {
                channelId: self.channel_id,
                nonce: self.nonce,
                cumulativeAmount: self.cumulative_amount,
            },
            signature: self.signature.clone(),
        }
    }
}

/// The answer to a [`WatchRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchResponse {
    /// One result per pushed voucher, in request order.
    pub results: Vec<WatchResult>,
}

impl WatchResponse {
    /// How many results have outcome [`WatchOutcome::Stored`].
    pub fn stored(&self) -> usize {
        self.results.iter().filter(|r| r.outcome == WatchOutcome::Stored).count()
    }

    /// The rejected results.
    pub fn rejected(&self) -> impl Iterator<Item = &WatchResult> {
        self.results.iter().filter(|r| matches!(r.outcome, WatchOutcome::Rejected { .. }))
    }
}

/// What the watcher did with one pushed voucher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchResult {
    /// The voucher's channel.
    pub channel_id: B256,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount.
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// The outcome, flattened: a `status` field and its details.
    #[serde(flatten)]
    pub outcome: WatchOutcome,
}

/// The outcome of one pushed voucher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum WatchOutcome {
    /// The watcher now holds this voucher, durably (also when it already held it).
    Stored,
    /// The voucher is valid, but the watcher holds a claim that pays the payee at least as
    /// much, which it keeps.
    Kept {
        /// The held voucher's nonce.
        held_nonce: u64,
        /// What the held claim pays the payee in total.
        #[serde(with = "u256_dec")]
        held_amount: U256,
    },
    /// The voucher was refused.
    Rejected {
        /// Why, machine-readable.
        code: RejectCode,
        /// Why, for humans.
        message: String,
    },
}

/// Why a watcher refused a voucher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectCode {
    /// The channel does not exist at the watcher's contract on its chain.
    ChannelUnknown,
    /// The channel is closed on-chain: nothing is left to guard.
    ChannelClosed,
    /// The signature is not the channel signer's under the watcher's EIP-712 domain (chain id
    /// and contract): a forged voucher, or one for another deployment.
    InvalidSignature,
    /// The payee's claim authorisation is not the channel payee's signature over
    /// `ClaimAuthorization(channelId, nonce, claimed)`, or `claimed` is above the voucher.
    InvalidClaimAuthorization,
    /// The parameters do not hash to the channel id at the watcher's contract and chain.
    ParamsMismatch,
    /// The cumulative amount is above the channel's deposit.
    ExceedsDeposit,
    /// The claim pays no more than what was already paid on-chain.
    Stale,
    /// The watcher could not check the voucher (chain unreachable); push it again later.
    Unavailable,
}

impl RejectCode {
    /// The snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ChannelUnknown => "channel_unknown",
            Self::ChannelClosed => "channel_closed",
            Self::InvalidSignature => "invalid_signature",
            Self::InvalidClaimAuthorization => "invalid_claim_authorization",
            Self::ParamsMismatch => "params_mismatch",
            Self::ExceedsDeposit => "exceeds_deposit",
            Self::Stale => "stale",
            Self::Unavailable => "unavailable",
        }
    }

    /// Whether pushing the same voucher again later may succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel a watcher guards, as listed by `GET` [`CHANNELS_PATH`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedChannel {
    /// The channel.
    pub channel_id: B256,
    /// The depositor.
    pub payer: Address,
    /// The provider, who receives what the watcher submits.
    pub payee: Address,
    /// The token (zero for the native token).
    pub token: Address,
    /// The channel's status, as last read from the chain.
    pub status: WatchedStatus,
    /// The deposit, as last read from the chain.
    #[serde(with = "u256_dec")]
    pub deposit: U256,
    /// Paid to the payee on-chain, as last read.
    #[serde(with = "u256_dec")]
    pub paid: U256,
    /// When the payer may withdraw (0: no exit pending), unix seconds.
    pub exit_at: u64,
    /// The nonce of the voucher the watcher holds.
    pub nonce: u64,
    /// The cumulative amount of the voucher the watcher holds.
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// What the held claim pays the payee in total.
    #[serde(with = "u256_dec")]
    pub claimed: U256,
    /// The watcher's last settlement transaction on this channel, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tx: Option<B256>,
}

/// A watched channel's on-chain status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchedStatus {
    /// Open, no exit pending.
    Open,
    /// The payer requested an exit (its challenge period may have ended).
    Exiting,
    /// Closed on-chain.
    Closed,
}

/// The body of an error response of the watcher's API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// Why, machine-readable.
    pub error: ApiErrorCode,
    /// Why, for humans.
    pub message: String,
}

/// Machine-readable reason of an [`ApiError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApiErrorCode {
    /// The bearer token is missing or wrong (`401`).
    Unauthorized,
    /// The body is not a valid request (`400`, or `413` when too large).
    InvalidRequest,
    /// The watcher cannot store vouchers durably right now (`503`); retry later.
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voucher() -> WatchedVoucher {
        WatchedVoucher {
            channel_id: B256::repeat_byte(0x11),
            nonce: 7,
            cumulative_amount: U256::from(123_456_789u64),
            signature: Bytes::from(vec![0xab; 65]),
            claimed: U256::from(100u64),
            payee_signature: Bytes::from(vec![0xcd; 65]),
            params: ChannelParams { payer: Address::repeat_byte(1), ..ChannelParams::default() },
        }
    }

    #[test]
    fn request_is_camel_case_with_decimal_amounts() {
        let json = serde_json::to_value(WatchRequest { vouchers: vec![voucher()] }).unwrap();
        let v = &json["vouchers"][0];
        assert_eq!(v["channelId"], format!("0x{}", "11".repeat(32)));
        assert_eq!(v["nonce"], 7);
        assert_eq!(v["cumulativeAmount"], "123456789");
        assert!(v["signature"].as_str().unwrap().starts_with("0xabab"));
        assert_eq!(v["claimed"], "100");
        assert!(v["payeeSignature"].as_str().unwrap().starts_with("0xcdcd"));
        assert_eq!(v["params"]["payer"], format!("0x{}", "01".repeat(20)));
        assert_eq!(v["params"]["challengePeriod"], 0);
        let back: WatchRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back.vouchers, vec![voucher()]);
    }

    #[test]
    fn request_refuses_bad_amounts_and_unknown_fields() {
        let base = serde_json::to_value(voucher()).unwrap();
        for (field, value) in [
            ("cumulativeAmount", serde_json::json!(5)),
            ("cumulativeAmount", serde_json::json!("-5")),
            ("cumulativeAmount", serde_json::json!("0x10")),
            ("cumulativeAmount", serde_json::json!("007")),
            ("nonce", serde_json::json!(-1)),
            ("channelId", serde_json::json!("0x12")),
            ("claimed", serde_json::json!(1)),
            ("claimed", serde_json::json!("-1")),
            ("unknown", serde_json::json!("1")),
        ] {
            let mut v = base.clone();
            v[field] = value.clone();
            let req = serde_json::json!({ "vouchers": [v] });
            assert!(serde_json::from_value::<WatchRequest>(req).is_err(), "{field} = {value}");
        }
        assert!(serde_json::from_str::<WatchRequest>(r#"{"vouchers":[],"x":1}"#).is_err());
    }

    #[test]
    fn carries_the_voucher() {
        let signed = voucher().voucher();
        assert_eq!((signed.nonce(), signed.channel_id()), (7, B256::repeat_byte(0x11)));
        assert_eq!(signed.signature, voucher().signature);
    }

    #[test]
    fn outcomes_are_tagged_and_round_trip() {
        let results = vec![
            WatchResult {
                channel_id: B256::ZERO,
                nonce: 1,
                cumulative_amount: U256::from(10),
                outcome: WatchOutcome::Stored,
            },
            WatchResult {
                channel_id: B256::ZERO,
                nonce: 1,
                cumulative_amount: U256::from(10),
                outcome: WatchOutcome::Kept { held_nonce: 2, held_amount: U256::from(20) },
            },
            WatchResult {
                channel_id: B256::ZERO,
                nonce: 1,
                cumulative_amount: U256::from(10),
                outcome: WatchOutcome::Rejected { code: RejectCode::Stale, message: "old".into() },
            },
        ];
        let response = WatchResponse { results };
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json["results"][0]["status"], "stored");
        assert_eq!(json["results"][1]["status"], "kept");
        assert_eq!(json["results"][1]["heldNonce"], 2);
        assert_eq!(json["results"][1]["heldAmount"], "20");
        assert_eq!(json["results"][2]["status"], "rejected");
        assert_eq!(json["results"][2]["code"], "stale");
        assert_eq!(json["results"][2]["cumulativeAmount"], "10");
        let back: WatchResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back, response);
        assert_eq!((back.stored(), back.rejected().count()), (1, 1));
    }

    #[test]
    fn reject_codes_match_serde() {
        for code in [
            RejectCode::ChannelUnknown,
            RejectCode::ChannelClosed,
            RejectCode::InvalidSignature,
            RejectCode::InvalidClaimAuthorization,
            RejectCode::ParamsMismatch,
            RejectCode::ExceedsDeposit,
            RejectCode::Stale,
            RejectCode::Unavailable,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert_eq!(code.is_retryable(), code == RejectCode::Unavailable);
        }
    }
}
