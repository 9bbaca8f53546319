//! The x402 v2 wire format for the `channel` scheme.
//!
//! - A refused request gets `402` with a [`PaymentRequired`] in the `PAYMENT-REQUIRED` header
//!   (base64 JSON) and, as plain JSON, in the body.
//! - The client pays with a [`PaymentPayload`] in `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (the
//!   v1 alias), base64 JSON.
//! - A paid response carries a [`SettlementResponse`] in `PAYMENT-RESPONSE`, base64 JSON.
//! - Credit windows: a voucher may pay ahead for several requests. The node then grants a
//!   [`SessionGrant`] in the `PAYMENT-RESPONSE`, and the next requests inside the prepaid
//!   window present `PAYMENT-SESSION: <channelId>:<token>` ([`encode_session`]) instead of a
//!   new signature.
//!
//! Amounts are decimal strings of token base units, as in x402.

use std::fmt;

use alloy::primitives::{Address, B256, Bytes, U256};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, Network, Result, SignedVoucher, Voucher};

/// The x402 protocol version this crate speaks.
pub const X402_VERSION: u32 = 2;
/// The payment scheme name.
pub const SCHEME: &str = "channel";
/// Header of a 402 response carrying a base64 [`PaymentRequired`].
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// Header of a request carrying a base64 [`PaymentPayload`] (x402 v2).
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// The x402 v1 alias of [`PAYMENT_SIGNATURE`].
pub const X_PAYMENT: &str = "x-payment";
/// Header of a paid response carrying a base64 [`SettlementResponse`].
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// Header of a request paid from a prepaid credit window: `<channelId>:<token>`, both
/// `0x`-prefixed hex (see [`SessionGrant`]).
pub const PAYMENT_SESSION: &str = "payment-session";
/// The longest payment header accepted, in bytes (before base64 decoding).
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// Machine-readable reason a payment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No payment was presented.
    PaymentRequired,
    /// The payment header is malformed: bad base64, bad JSON, wrong types, too large.
    InvalidPayload,
    /// The x402 version is not supported.
    InvalidX402Version,
    /// The scheme is not `channel`.
    InvalidScheme,
    /// The network is not the node's.
    InvalidNetwork,
    /// The channel does not exist on-chain.
    ChannelUnknown,
    /// The channel pays another provider, token or contract, or its terms are not accepted
    /// (challenge period or deposit below the node's minimum).
    ChannelMismatch,
    /// The channel has an exit pending or a close requested: no new vouchers.
    ChannelClosing,
    /// The channel is closed.
    ChannelClosed,
    /// The voucher's nonce is not above the node's latest (corrective: see the channel state).
    NonceTooLow,
    /// The voucher's amount does not cover the price on top of the node's latest amount
    /// (corrective: see the channel state).
    AmountBelowPrice,
    /// The voucher's amount is above the channel's deposit.
    InsufficientDeposit,
    /// The voucher's signature is not the channel signer's.
    InvalidSignature,
    /// The session token is unknown, used up or revoked (a new voucher, a close, an exit, a
    /// node restart): pay with a new voucher (corrective: see the channel state).
    SessionInvalid,
    /// The node could not process the payment (storage or chain unavailable); retry later.
    Unavailable,
}

impl ErrorCode {
    /// The snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PaymentRequired => "payment_required",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidX402Version => "invalid_x402_version",
            Self::InvalidScheme => "invalid_scheme",
            Self::InvalidNetwork => "invalid_network",
            Self::ChannelUnknown => "channel_unknown",
            Self::ChannelMismatch => "channel_mismatch",
            Self::ChannelClosing => "channel_closing",
            Self::ChannelClosed => "channel_closed",
            Self::NonceTooLow => "nonce_too_low",
            Self::AmountBelowPrice => "amount_below_price",
            Self::InsufficientDeposit => "insufficient_deposit",
            Self::InvalidSignature => "invalid_signature",
            Self::SessionInvalid => "session_invalid",
            Self::Unavailable => "unavailable",
        }
    }

    /// Whether a client can retry at once after resynchronising to the channel state in the
    /// 402 (a *corrective* refusal).
    pub const fn is_corrective(self) -> bool {
        matches!(self, Self::NonceTooLow | Self::AmountBelowPrice | Self::SessionInvalid)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body and `PAYMENT-REQUIRED` header of a 402.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always [`X402_VERSION`].
    pub x402_version: u32,
    /// Why the presented payment was refused; absent when none was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    /// A human-readable explanation of `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The resource that costs money.
    pub resource: Resource,
    /// The payment options; this node offers one per accepted token.
    pub accepts: Vec<PaymentRequirements>,
}

/// The resource a 402 is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// The request URL (path and query).
    pub url: String,
    /// What the route does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The MIME type of the paid response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One way to pay: scheme `channel` on one network, in one token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// Always [`SCHEME`].
    pub scheme: String,
    /// The chain.
    pub network: Network,
    /// The price in token base units; for dynamically priced routes, the most one request
    /// may cost (the voucher must cover it, the node charges what the request actually cost).
    #[serde(with = "u256_dec")]
    pub amount: U256,
    /// The token, or the zero address for the native token.
    pub asset: Address,
    /// The provider (the channel's payee).
    pub pay_to: Address,
    /// How long the node takes at most to answer a paid request.
    pub max_timeout_seconds: u64,
    /// Scheme-specific terms.
    pub extra: ChannelExtra,
}

/// The `extra` of [`PaymentRequirements`]: what a client needs to open a channel and pay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelExtra {
    /// The `PaymentChannel` contract.
    pub contract: Address,
    /// The EIP-712 domain name.
    pub name: String,
    /// The EIP-712 domain version.
    pub version: String,
    /// The shortest challenge period the node accepts, in seconds.
    pub min_challenge_period: u64,
    /// The smallest deposit the node accepts, in token base units.
    #[serde(with = "u256_dec")]
    pub min_deposit: U256,
    /// `"exact"` for a fixed price, `"upto"` when the node charges the actual cost up to `amount`.
    pub pricing: Pricing,
    /// The node's state of the channel the request named, if it knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelState>,
    /// The most requests one voucher may pay ahead for (a credit window; see
    /// [`SessionGrant`]). Absent: one voucher per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_credit_window: Option<u32>,
}

/// How a route is priced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pricing {
    /// Every request costs `amount`.
    #[default]
    Exact,
    /// A request costs what it actually cost, at most `amount`.
    Upto,
}

/// The node's view of a channel, sent so that a client can resynchronise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    /// The channel.
    pub channel_id: B256,
    /// The nonce of the latest voucher the node holds (0: none).
    pub nonce: u64,
    /// The cumulative amount of that voucher (the signed ceiling).
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// What the node has actually charged in total (≤ `cumulative_amount`). The next voucher
    /// must cover `charged + price`.
    #[serde(with = "u256_dec")]
    pub charged: U256,
    /// The channel's deposit.
    #[serde(with = "u256_dec")]
    pub deposit: U256,
}

/// What a client sends in `PAYMENT-SIGNATURE` (or `X-PAYMENT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// The x402 version the client speaks (1 or 2).
    pub x402_version: u32,
    /// The requirements the client chose to pay (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<AcceptedRequirements>,
    /// The scheme (v1 puts it at the top level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The network (v1 puts it at the top level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The voucher.
    pub payload: VoucherPayload,
}

/// The part of the chosen [`PaymentRequirements`] the node checks. Other fields a client
/// echoes back are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedRequirements {
    /// The scheme.
    pub scheme: String,
    /// The network, as sent (validated by the node).
    pub network: String,
    /// The token the client pays in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<Address>,
}

impl From<&PaymentRequirements> for AcceptedRequirements {
    fn from(r: &PaymentRequirements) -> Self {
        Self { scheme: r.scheme.clone(), network: r.network.to_string(), asset: Some(r.asset) }
    }
}

impl PaymentPayload {
    /// A v2 payload paying `requirements` with `voucher`.
    pub fn new(requirements: &PaymentRequirements, voucher: &SignedVoucher) -> Self {
        Self {
            x402_version: X402_VERSION,
            accepted: Some(requirements.into()),
            scheme: None,
            network: None,
            payload: voucher.into(),
        }
    }

    /// The scheme, from `accepted` (v2) or the top level (v1).
    pub fn scheme(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.scheme.as_str()).or(self.scheme.as_deref())
    }

    /// The network, from `accepted` (v2) or the top level (v1).
    pub fn network(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.network.as_str()).or(self.network.as_deref())
    }
}

/// The voucher inside a [`PaymentPayload`] (and pushed to watchers). Unknown fields are
/// refused: a field the node does not understand must not be silently ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoucherPayload {
    /// The channel.
    pub channel_id: B256,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount.
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// The signature, hex.
    pub signature: Bytes,
}

impl From<&SignedVoucher> for VoucherPayload {
    fn from(v: &SignedVoucher) -> Self {
        Self {
            channel_id: v.voucher.channelId,
            nonce: v.voucher.nonce,
            cumulative_amount: v.voucher.cumulativeAmount,
            signature: v.signature.clone(),
        }
    }
}

impl From<VoucherPayload> for SignedVoucher {
    fn from(p: VoucherPayload) -> Self {
        Self {
            voucher: Voucher {
                channelId: p.channel_id,
                nonce: p.nonce,
                cumulativeAmount: p.cumulative_amount,
            },
            signature: p.signature,
        }
    }
}

/// What a paid response carries in `PAYMENT-RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementResponse {
    /// Always true on a paid response.
    pub success: bool,
    /// Empty: channel payments settle later, in batches.
    pub transaction: String,
    /// The chain.
    pub network: Network,
    /// The channel's payer.
    pub payer: Address,
    /// The channel state after this payment.
    pub extra: SettlementExtra,
}

/// The `extra` of a [`SettlementResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementExtra {
    /// The channel.
    pub channel_id: B256,
    /// The nonce of the voucher that paid.
    pub nonce: u64,
    /// Its cumulative amount.
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// What this request cost.
    #[serde(with = "u256_dec")]
    pub charged: U256,
    /// What the node has charged on this channel in total.
    #[serde(with = "u256_dec")]
    pub total_charged: U256,
    /// The session of the prepaid credit window, while it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionGrant>,
}

/// A session over a prepaid credit window: the voucher that paid covered more than this
/// request, and the next `uses` requests may present `token` (in [`PAYMENT_SESSION`]) instead
/// of a new signature. The token is random, bound to its channel, and dies when the window is
/// used up, when a newer voucher arrives, or when the channel is closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionGrant {
    /// The bearer token.
    pub token: B256,
    /// How many more requests the token may pay for.
    pub uses: u32,
}

/// The [`PAYMENT_SESSION`] header value of a session on `channel`.
pub fn encode_session(channel: B256, token: B256) -> String {
    format!("{channel}:{token}")
}

/// Parses a [`PAYMENT_SESSION`] header value into `(channel, token)`.
pub fn decode_session(value: &[u8]) -> Option<(B256, B256)> {
    // Exactly two 0x-prefixed 32-byte hex strings: 66 + 1 + 66 bytes.
    if value.len() != 133 || value[66] != b':' {
        return None;
    }
    let hex = |part: &[u8]| -> Option<B256> {
        let digits = part.strip_prefix(b"0x")?;
        let mut out = [0u8; 32];
        alloy::hex::decode_to_slice(digits, &mut out).ok()?;
        Some(B256::from(out))
    };
    Some((hex(&value[..66])?, hex(&value[67..])?))
}

/// Encodes `value` as a base64 JSON header value.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs cannot fail.
    STANDARD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Decodes a base64 JSON header value, refusing values above [`MAX_HEADER_LEN`].
pub fn decode_header<T: DeserializeOwned>(value: &[u8]) -> Result<T> {
    if value.len() > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge { len: value.len(), max: MAX_HEADER_LEN });
    }
    let trimmed = value.trim_ascii();
    let json = STANDARD.decode(trimmed)?;
    Ok(serde_json::from_slice(&json)?)
}

/// Serde for [`U256`] as a canonical decimal string (`"0"`, `"1000000"`).
pub mod u256_dec {
    use alloy::primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serialises as a decimal string.
    pub fn serialize<S: Serializer>(value: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// Deserialises a decimal string of at most 78 digits, without sign or leading zeros.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).ok_or_else(|| D::Error::custom(format!("invalid decimal amount {s:?}")))
    }

    /// Parses a canonical decimal amount.
    pub fn parse(s: &str) -> Option<U256> {
        let ok = !s.is_empty()
            && s.len() <= 78
            && s.bytes().all(|b| b.is_ascii_digit())
            && !(s.len() > 1 && s.starts_with('0'));
        if !ok {
            return None;
        }
        U256::from_str_radix(s, 10).ok()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn requirements() -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME.into(),
            network: Network::new(31337),
            amount: U256::from(1000),
            asset: Address::repeat_byte(1),
            pay_to: Address::repeat_byte(2),
            max_timeout_seconds: 60,
            extra: ChannelExtra {
                contract: Address::repeat_byte(3),
                name: crate::voucher::DOMAIN_NAME.into(),
                version: crate::voucher::DOMAIN_VERSION.into(),
                min_challenge_period: 3600,
                min_deposit: U256::from(1_000_000),
                pricing: Pricing::Exact,
                channel: None,
                max_credit_window: None,
            },
        }
    }

    #[test]
    fn session_header_round_trips_and_refuses_anything_else() {
        let (channel, token) = (B256::repeat_byte(0xab), B256::repeat_byte(0x01));
        let value = encode_session(channel, token);
        assert_eq!(decode_session(value.as_bytes()), Some((channel, token)));
        let bad = [
            String::new(),
            value[..132].to_owned(),
            format!("{value}0"),
            value.replace(':', ";"),
            value.replacen("0x", "0X", 1),
            format!("{channel}:{}", "zz".repeat(33)),
            format!("{}:{token}", &channel.to_string()[..64]),
        ];
        for b in bad {
            assert_eq!(decode_session(b.as_bytes()), None, "{b:?}");
        }
    }

    proptest! {
        #[test]
        fn session_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_session(&bytes);
        }
    }

    #[test]
    fn payment_required_json_shape() {
        let pr = PaymentRequired {
            x402_version: 2,
            error: Some(ErrorCode::NonceTooLow),
            message: Some("stale".into()),
            resource: Resource { url: "/x".into(), description: None, mime_type: None },
            accepts: vec![requirements()],
        };
        let json: serde_json::Value = serde_json::to_value(&pr).unwrap();
        assert_eq!(json["x402Version"], 2);
        assert_eq!(json["error"], "nonce_too_low");
        assert_eq!(json["accepts"][0]["scheme"], "channel");
        assert_eq!(json["accepts"][0]["network"], "eip155:31337");
        assert_eq!(json["accepts"][0]["amount"], "1000");
        assert_eq!(json["accepts"][0]["maxTimeoutSeconds"], 60);
        assert_eq!(json["accepts"][0]["extra"]["minChallengePeriod"], 3600);
        assert_eq!(json["accepts"][0]["extra"]["pricing"], "exact");
        assert!(json["accepts"][0]["extra"].get("channel").is_none());
        let header = encode_header(&pr);
        assert_eq!(decode_header::<PaymentRequired>(header.as_bytes()).unwrap(), pr);
    }

    #[test]
    fn v1_payload_reads_top_level_scheme() {
        let json = serde_json::json!({
            "x402Version": 1,
            "scheme": "channel",
            "network": "eip155:1",
            "payload": {
                "channelId": B256::repeat_byte(7),
                "nonce": 3,
                "cumulativeAmount": "42",
                "signature": "0x00"
            }
        });
        let header = STANDARD.encode(json.to_string());
        let p: PaymentPayload = decode_header(header.as_bytes()).unwrap();
        assert_eq!(p.scheme(), Some("channel"));
        assert_eq!(p.network(), Some("eip155:1"));
        assert_eq!(p.payload.cumulative_amount, U256::from(42));
    }

    #[test]
    fn decode_rejects_bad_input() {
        let too_big = vec![b'A'; MAX_HEADER_LEN + 1];
        for bad in [&b"%%%"[..], b"e30", &too_big, &STANDARD.encode("{\"x402Version\":\"2\"}").into_bytes()] {
            assert!(decode_header::<PaymentPayload>(bad).is_err());
        }
    }

    #[test]
    fn amounts_are_canonical_decimals() {
        for (s, ok) in [
            ("0", true),
            ("10", true),
            ("010", false),
            ("0x10", false),
            ("-1", false),
            ("", false),
            ("1e3", false),
        ] {
            assert_eq!(u256_dec::parse(s).is_some(), ok, "{s}");
        }
        let max = U256::MAX.to_string();
        assert_eq!(u256_dec::parse(&max), Some(U256::MAX));
        assert_eq!(u256_dec::parse(&format!("{max}0")), None);
    }

    proptest! {
        #[test]
        fn payload_round_trips(nonce: u64, amount: [u8; 32], id: [u8; 32], sig in proptest::collection::vec(any::<u8>(), 0..100)) {
            let p = PaymentPayload {
                x402_version: 2,
                accepted: Some((&requirements()).into()),
                scheme: None,
                network: None,
                payload: VoucherPayload {
                    channel_id: B256::from(id),
                    nonce,
                    cumulative_amount: U256::from_be_bytes(amount),
                    signature: Bytes::from(sig),
                },
            };
            let decoded: PaymentPayload = decode_header(encode_header(&p).as_bytes()).unwrap();
            prop_assert_eq!(decoded, p);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_header::<PaymentPayload>(&bytes);
            let _ = decode_header::<PaymentPayload>(STANDARD.encode(&bytes).as_bytes());
        }
    }
}
